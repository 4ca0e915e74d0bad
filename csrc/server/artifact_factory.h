// The executor factory for exported artifacts (an entry's `artifact:` folder): reads its
// manifest, checks the entry against it, and loads it with LibTorch. Shared by the C++ binary and
// `jit-embedding serve`, so both load artifacts the same way.
#pragma once

#include <memory>

#include "executor/executor.h"
#include "server/config.h"

namespace jit::server {

// Loads entry.artifact (a folder with manifest.json) as a LibTorch executor with the entry's
// device, instances (as runners), intra-op threads and memory budget.
// Throws ServerError(kUnprocessable) for an entry that disagrees with its manifest, for a
// `factory:` entry (Python factories are not artifacts), or when this build has no LibTorch;
// executor::ExecutorError when the manifest or the artifact cannot be loaded.
std::shared_ptr<executor::Executor> load_artifact_executor(const EncoderEntry &entry);

} // namespace jit::server
