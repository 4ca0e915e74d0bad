// An exported encoder's manifest.json (docs/export.md): what the artifact takes and gives, which
// weights and code it was built from, and for which torch and device.
//
// `jit-embedding export` writes it; the server reads it to build an executor. Torch-free, so the
// server's config checks and /v1/encoders need no LibTorch.
#pragma once

#include <cstdint>
#include <string>

#include "common/types.h"
#include "executor/executor.h"

namespace jit::executor {

struct Manifest {
  int format_version = 1;
  std::string name;           // the name it was exported under, e.g. "clip-text"
  std::string family;         // "vae", "clip_text", "t5", "minilm", "module"
  std::string format;         // "aoti" (.pt2 from AOTInductor) or "torchscript" (.pt)
  std::string artifact;       // absolute path of the artifact file
  EncoderSpec spec;           // inputs in the artifact's positional order, outputs in its return order
  std::string version;        // "sha256:<hex>" over the weights and the code; part of every cache key
  std::string torch_version;  // the torch that exported it, e.g. "2.13.0+cpu"
  std::string device;         // what it was built for: "cpu" or "cuda"
  std::string dtype;          // the compute dtype: "float32" or "bfloat16"
  int64_t max_batch_size = 0; // the upper bound of the exported batch dimension; 0 when unbounded
};

// Reads `path`: an artifact folder holding manifest.json, or the manifest file itself. Relative
// artifact paths resolve against the manifest's folder.
// Throws ExecutorError naming the file and the field for a missing file, unparsable JSON, a
// missing or mistyped field, an unknown format or dtype, or an artifact file that does not exist.
Manifest load_manifest(const std::string &path);

// Parses manifest JSON text; `dir` is the folder relative artifact paths resolve against.
// Throws ExecutorError as load_manifest does.
Manifest parse_manifest(const std::string &json_text, const std::string &dir);

} // namespace jit::executor
