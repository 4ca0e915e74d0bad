#include "server/artifact_factory.h"

#include "executor/manifest.h"
#ifdef JIT_WITH_TORCH_EXECUTOR
#include "executor/torch_executor.h"
#endif

namespace jit::server {

std::shared_ptr<executor::Executor> load_artifact_executor(const EncoderEntry &entry) {
  if (!entry.factory.empty()) {
    throw ServerError(ServerError::Code::kUnprocessable,
                      "factory '" + entry.factory +
                          "' is a Python factory: Python factories need `jit-embedding serve`; "
                          "jit-embedding-server loads exported artifacts (artifact: <folder>) only");
  }
  const executor::Manifest manifest = executor::load_manifest(entry.artifact);
  check_manifest(entry, manifest);
#ifdef JIT_WITH_TORCH_EXECUTOR
  executor::TorchExecutorOptions options;
  options.device = entry.device;
  options.num_runners = entry.engine.instances;
  options.intra_op_threads = entry.intra_op_threads;
  options.memory_budget_bytes = entry.memory_budget_bytes;
  options.pinned_pool_bytes = entry.pinned_pool_bytes;
  options.streams = entry.cuda_streams;
  return executor::load_torch_executor(manifest, options);
#else
  throw ServerError(ServerError::Code::kUnprocessable, "this build has no LibTorch, so it cannot load " +
                                                           entry.artifact + " (rebuild with torch installed)");
#endif
}

} // namespace jit::server
