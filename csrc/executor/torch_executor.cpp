// The LibTorch executors. This is the one translation unit of the server that includes torch.
#include "executor/torch_executor.h"

#include <ATen/Parallel.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/cuda.h>
#include <torch/script.h>

#include <filesystem>
#include <mutex>

namespace jit::executor {

namespace {

at::ScalarType to_scalar_type(DType d) {
  switch (d) {
  case DType::kFloat32: return at::kFloat;
  case DType::kFloat16: return at::kHalf;
  case DType::kBFloat16: return at::kBFloat16;
  case DType::kFloat8E4M3: return at::kFloat8_e4m3fn;
  case DType::kInt8: return at::kChar;
  case DType::kUInt8: return at::kByte;
  case DType::kInt16: return at::kShort;
  case DType::kInt32: return at::kInt;
  case DType::kInt64: return at::kLong;
  case DType::kBool: return at::kBool;
  default: throw ExecutorError("dtype " + std::string(dtype_name(d)) + " cannot be a tensor input");
  }
}

std::string shape_text(at::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i)
    out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// AOTIModelPackageLoader's constructor unpacks the package and dlopen()s it; it is not safe to run
// two at once, so every loader in the process is built under this lock.
std::mutex &aoti_construct_mutex() {
  static std::mutex mu;
  return mu;
}

// Sets this thread's intra-op thread count once. With torch's OpenMP backend the count is a
// per-thread setting, so each executor thread gets its own share of the cores.
void configure_thread(int intra_op_threads) {
  thread_local int configured = -1;
  if (configured == intra_op_threads) return;
  at::init_num_threads();
  if (intra_op_threads > 0) at::set_num_threads(intra_op_threads);
  configured = intra_op_threads;
}

class TorchExecutorBase : public Executor {
public:
  TorchExecutorBase(const Manifest &m, const TorchExecutorOptions &o)
      : manifest_(m), options_(o), device_(resolve_device(m, o.device)) {}

  const EncoderSpec &spec() const override { return manifest_.spec; }
  const std::string &version() const override { return manifest_.version; }

  EncoderOutput run(const Batch &batch) override {
    configure_thread(options_.intra_op_threads);
    c10::InferenceMode guard;
    std::vector<at::Tensor> inputs;
    inputs.reserve(batch.inputs.size());
    for (const Tensor &t : batch.inputs) {
      // Borrowed: the batch keeps the bytes alive until run() returns, and the model never writes them.
      at::Tensor x = at::from_blob(const_cast<void *>(t.data), t.shape, at::TensorOptions(to_scalar_type(t.dtype)));
      inputs.push_back(device_.is_cpu() ? x : x.to(device_, /*non_blocking=*/false));
    }
    std::vector<at::Tensor> outs = forward(inputs);
    const auto &want = manifest_.spec.outputs;
    if (outs.size() != want.size()) {
      throw ExecutorError(manifest_.name + ": the artifact returned " + std::to_string(outs.size()) +
                          " outputs, its manifest lists " + std::to_string(want.size()));
    }
    EncoderOutput result;
    for (size_t i = 0; i < outs.size(); ++i) {
      if (outs[i].scalar_type() != to_scalar_type(want[i].dtype)) {
        throw ExecutorError(manifest_.name + ": output '" + want[i].name + "' is " +
                            std::string(c10::toString(outs[i].scalar_type())) + ", its manifest says " +
                            std::string(dtype_name(want[i].dtype)));
      }
      if (outs[i].dim() != static_cast<int64_t>(want[i].shape.size())) {
        throw ExecutorError(manifest_.name + ": output '" + want[i].name + "' has shape " +
                            shape_text(outs[i].sizes()) + ", its manifest has rank " +
                            std::to_string(want[i].shape.size()));
      }
      // The holder keeps the (contiguous, host) storage alive for as long as any slice of it is used.
      auto holder = std::make_shared<at::Tensor>(outs[i].to(at::kCPU).contiguous());
      Tensor t;
      t.name = want[i].name;
      t.dtype = want[i].dtype;
      t.shape.assign(holder->sizes().begin(), holder->sizes().end());
      t.data = holder->data_ptr();
      t.nbytes = holder->nbytes();
      t.owner = std::shared_ptr<const void>(holder, holder->data_ptr());
      result.outputs.push_back(std::move(t));
    }
    return result;
  }

protected:
  virtual std::vector<at::Tensor> forward(std::vector<at::Tensor> &inputs) = 0;

  // The device to run on: the option, else the manifest's. CUDA needs a CUDA build of torch and a device.
  static at::Device resolve_device(const Manifest &m, const std::string &requested) {
    const std::string name = requested.empty() ? m.device : requested;
    at::Device device(at::kCPU);
    try {
      device = at::Device(name);
    } catch (const std::exception &) {
      throw ExecutorError(m.name + ": unknown device '" + name + "' (use cpu, cuda or cuda:N)");
    }
    if (!device.is_cpu() && !device.is_cuda()) throw ExecutorError(m.name + ": unsupported device '" + name + "'");
    if (device.is_cuda() && !torch::cuda::is_available()) {
      throw ExecutorError(m.name + ": device '" + name + "' requested, but no CUDA device is available to LibTorch");
    }
    return device;
  }

  // Weights only (activations come on top): a first guard against loading a model that cannot fit.
  void check_budget(uint64_t weight_bytes) const {
    if (options_.memory_budget_bytes > 0 && weight_bytes > options_.memory_budget_bytes) {
      throw ExecutorError(manifest_.name + ": its weights take " + std::to_string(weight_bytes) +
                          " bytes, over its memory budget of " + std::to_string(options_.memory_budget_bytes));
    }
  }

  const Manifest manifest_;
  const TorchExecutorOptions options_;
  const at::Device device_;
};

class AotiExecutor : public TorchExecutorBase {
public:
  AotiExecutor(const Manifest &m, const TorchExecutorOptions &o) : TorchExecutorBase(m, o) {
    // An AOTInductor package holds code compiled for one device kind; running it elsewhere crashes.
    if (device_.is_cuda() != (m.device == "cuda")) {
      throw ExecutorError(m.name + ": this .pt2 was compiled for " + m.device + " and cannot run on " + device_.str() +
                          "; export it again with --device " + device_.str());
    }
    std::error_code ec;
    check_budget(std::filesystem::file_size(m.artifact, ec));
    std::lock_guard<std::mutex> lock(aoti_construct_mutex());
    try {
      loader_ = std::make_unique<torch::inductor::AOTIModelPackageLoader>(
          m.artifact, "model", /*run_single_threaded=*/false, std::max<size_t>(1, o.num_runners),
          device_.is_cuda() ? device_.index() : c10::DeviceIndex(-1));
    } catch (const std::exception &e) {
      throw ExecutorError(m.name + ": cannot load " + m.artifact + ": " + e.what());
    }
  }

protected:
  std::vector<at::Tensor> forward(std::vector<at::Tensor> &inputs) override {
    try {
      return loader_->run(inputs);
    } catch (const std::exception &e) {
      throw ExecutorError(manifest_.name + ": " + e.what());
    }
  }

private:
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader_;
};

class TorchScriptExecutor : public TorchExecutorBase {
public:
  TorchScriptExecutor(const Manifest &m, const TorchExecutorOptions &o) : TorchExecutorBase(m, o) {
    try {
      module_ = torch::jit::load(m.artifact, device_);
    } catch (const std::exception &e) {
      throw ExecutorError(m.name + ": cannot load " + m.artifact + ": " + e.what());
    }
    module_.eval();
    uint64_t bytes = 0;
    for (const at::Tensor &p : module_.parameters())
      bytes += p.nbytes();
    for (const at::Tensor &b : module_.buffers())
      bytes += b.nbytes();
    check_budget(bytes);
  }

protected:
  std::vector<at::Tensor> forward(std::vector<at::Tensor> &inputs) override {
    std::vector<c10::IValue> args(inputs.begin(), inputs.end());
    c10::IValue out;
    try {
      out = module_.forward(args); // a Module's forward may run on several threads at once
    } catch (const std::exception &e) {
      throw ExecutorError(manifest_.name + ": " + e.what());
    }
    std::vector<at::Tensor> outs;
    if (out.isTensor()) {
      outs.push_back(out.toTensor());
    } else if (out.isTuple()) {
      for (const c10::IValue &v : out.toTupleRef().elements()) {
        if (!v.isTensor()) throw ExecutorError(manifest_.name + ": the module returned a tuple with a non-tensor");
        outs.push_back(v.toTensor());
      }
    } else if (out.isTensorList()) {
      for (const at::Tensor &t : out.toTensorVector())
        outs.push_back(t);
    } else {
      throw ExecutorError(manifest_.name + ": the module must return a tensor or a tuple of tensors, got " +
                          out.tagKind());
    }
    return outs;
  }

private:
  torch::jit::Module module_;
};

} // namespace

std::shared_ptr<Executor> load_torch_executor(const Manifest &manifest, const TorchExecutorOptions &options) {
  if (manifest.format == "aoti") return std::make_shared<AotiExecutor>(manifest, options);
  if (manifest.format == "torchscript") return std::make_shared<TorchScriptExecutor>(manifest, options);
  throw ExecutorError(manifest.name + ": unknown artifact format '" + manifest.format + "'");
}

} // namespace jit::executor
