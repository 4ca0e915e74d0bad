// The LibTorch executors. This is the one translation unit of the server that includes torch.
//
// The CUDA path uses only torch's device-generic stream and event API, so this file compiles and
// links against a CPU-only torch as well (the CUDA implementation registers itself at run time):
//   c10/core/impl/VirtualGuardImpl.h  VirtualGuardImpl(DeviceType::CUDA): getDevice(),
//                                     getStreamFromGlobalPool(Device, bool isHighPriority)
//   c10/core/Stream.h                 c10::Stream, Stream::native_handle() (the cudaStream_t)
//   c10/core/StreamGuard.h            c10::StreamGuard: sets the thread's device and current stream
//   c10/core/Event.h                  c10::Event(DeviceType): record(), block(), synchronize()
//   ATen/core/TensorBody.h            Tensor::record_stream(Stream), Tensor::copy_(src, non_blocking)
//   c10/core/TensorOptions.h          TensorOptions::pinned_memory(true), for at::empty
//   c10/core/DeviceGuard.h            c10::DeviceGuard: the thread's device, on the path without streams
//   ATen/core/CachingHostAllocator.h  at::getHostAllocator(kCUDA)->empty_cache(), after the staging
//                                     pool frees blocks
// Compiled and linked against torch 2.13.0+cpu (CI) and 2.11.0+cu130 (the GPU machine's; with
// JIT_TORCH_CUDA, docs/testing.md "The dry run with the device's torch"); run on CUDA by neither.
#include "executor/torch_executor.h"

#include <ATen/Parallel.h>
#include <ATen/core/CachingHostAllocator.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/Event.h>
#include <c10/core/Stream.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/cuda.h>
#include <torch/script.h>

#include <optional>

#include <cstring>
#include <filesystem>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "executor/device_staging.h"

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

// Page-locked host memory from torch's host allocator (cudaHostAlloc behind a cache that rounds
// sizes up to powers of two): the staging pool's allocation policy on CUDA. The returned pointer
// owns the tensor; freeing it hands the block back to torch's cache.
std::shared_ptr<void> allocate_pinned(size_t bytes) {
  auto block = std::make_shared<at::Tensor>(
      at::empty({static_cast<int64_t>(bytes)}, at::TensorOptions(at::kByte).pinned_memory(true)));
  return std::shared_ptr<void>(block, block->data_ptr());
}

// Lays `items` out one after another in a staging block, each at a 64-byte aligned offset (as
// make_tensor's are): appends each one's offset to `offsets` and returns the block's size.
template <typename Items, typename Bytes>
size_t pack_offsets(const Items &items, Bytes nbytes, std::vector<size_t> &offsets) {
  size_t total = 0;
  for (const auto &item : items) {
    offsets.push_back((total + 63) / 64 * 64);
    total = offsets.back() + nbytes(item);
  }
  return total;
}

class TorchExecutorBase : public Executor {
public:
  TorchExecutorBase(const Manifest &m, const TorchExecutorOptions &o)
      : manifest_(m), options_(o), device_(resolve_device(m, o.device)) {
    if (device_.is_cuda() && options_.streams) {
      // "cuda" without an index is the current device, as in torch; the streams need a concrete one.
      cuda_device_ = device_.has_index() ? device_ : c10::impl::VirtualGuardImpl(c10::DeviceType::CUDA).getDevice();
      // Blocks the pool frees go back to torch's pinned cache, which keeps them page-locked: flush
      // it then, so the pool's budget bounds the pinned memory it causes.
      staging_ = std::make_unique<StagingPool>(options_.pinned_pool_bytes, allocate_pinned, allocate_pageable,
                                               [] { at::getHostAllocator(at::kCUDA)->empty_cache(); });
    }
  }

  const EncoderSpec &spec() const override { return manifest_.spec; }
  const std::string &version() const override { return manifest_.version; }

  std::optional<DeviceStats> device_stats() const override {
    if (!staging_) return std::nullopt;
    const StagingStats s = staging_->stats();
    DeviceStats d;
    d.pinned_bytes = s.pooled_bytes;
    d.pinned_leased_bytes = s.leased_bytes;
    d.pinned_fallbacks = s.fallbacks;
    return d;
  }

  EncoderOutput run(const Batch &batch) override {
    configure_thread(options_.intra_op_threads);
    c10::InferenceMode guard;
    if (staging_) return run_on_streams(batch);
    // On cuda:N, the copies and a model run without a stream handle use the thread's current device.
    std::optional<c10::DeviceGuard> on_device;
    if (device_.is_cuda()) on_device.emplace(device_);
    std::vector<at::Tensor> inputs;
    inputs.reserve(batch.inputs.size());
    for (const Tensor &t : batch.inputs) {
      // Borrowed: the batch keeps the bytes alive until run() returns, and the model never writes them.
      at::Tensor x = at::from_blob(const_cast<void *>(t.data), t.shape, at::TensorOptions(to_scalar_type(t.dtype)));
      inputs.push_back(device_.is_cpu() ? x : x.to(device_, /*non_blocking=*/false));
    }
    std::vector<at::Tensor> outs = forward(inputs, /*stream_handle=*/nullptr);
    check_outputs(outs);
    EncoderOutput result;
    for (size_t i = 0; i < outs.size(); ++i) {
      // The holder keeps the (contiguous, host) storage alive for as long as any slice of it is used.
      auto holder = std::make_shared<at::Tensor>(outs[i].to(at::kCPU).contiguous());
      result.outputs.push_back(output_view(i, *holder, holder->data_ptr(), holder));
    }
    return result;
  }

protected:
  // Runs the artifact on `inputs` (on the executor's device). `stream_handle` is the cudaStream_t
  // to run on, or nullptr for the thread's current stream; the streams path passes its compute
  // stream, which is also the current stream then.
  virtual std::vector<at::Tensor> forward(std::vector<at::Tensor> &inputs, void *stream_handle) = 0;

  // The artifact returned what its manifest says: as many outputs, each of its dtype and rank.
  void check_outputs(const std::vector<at::Tensor> &outs) const {
    const auto &want = manifest_.spec.outputs;
    if (outs.size() != want.size()) {
      throw ExecutorError(manifest_.name + ": the artifact returned " + std::to_string(outs.size()) +
                          " outputs, its manifest lists " + std::to_string(want.size()));
    }
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
    }
  }

  // Output i of the manifest: out's shape over out.nbytes() bytes at `data` (host), kept alive by
  // `owner` (a holder or a staging lease).
  Tensor output_view(size_t i, const at::Tensor &out, void *data, std::shared_ptr<const void> owner) const {
    const TensorSpec &want = manifest_.spec.outputs[i];
    Tensor t;
    t.name = want.name;
    t.dtype = want.dtype;
    t.shape.assign(out.sizes().begin(), out.sizes().end());
    t.data = data;
    t.nbytes = out.nbytes();
    t.owner = std::shared_ptr<const void>(owner, data);
    return t;
  }

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

private:
  // One runner (engine thread)'s streams and events. Only that thread uses them, so the events
  // (which are not thread-safe) need no lock.
  struct Runner {
    c10::Stream copy;
    c10::Stream compute;
    c10::Event inputs_copied{c10::DeviceType::CUDA};    // on copy: the inputs are on the device
    c10::Event outputs_computed{c10::DeviceType::CUDA}; // on compute: the forward is done
    c10::Event outputs_copied{c10::DeviceType::CUDA};   // on copy: the outputs are in the host block
    Runner(c10::Stream a, c10::Stream b) : copy(a), compute(b) {}
  };

  // This thread's runner, made on its first batch. The engine's threads live as long as the
  // deployment that owns this executor, so the map holds `instances` entries.
  Runner &runner() {
    std::lock_guard<std::mutex> lock(runners_mu_);
    std::unique_ptr<Runner> &r = runners_[std::this_thread::get_id()];
    if (!r) {
      // Two streams from torch's pool (created non-blocking, so they never wait on the legacy
      // default stream); the pool hands them out round-robin, so runners get different ones.
      c10::impl::VirtualGuardImpl cuda(c10::DeviceType::CUDA);
      const c10::Stream copy = cuda.getStreamFromGlobalPool(cuda_device_, /*isHighPriority=*/false);
      const c10::Stream compute = cuda.getStreamFromGlobalPool(cuda_device_, /*isHighPriority=*/false);
      r = std::make_unique<Runner>(copy, compute);
    }
    return *r;
  }

  // The CUDA path with streams (see torch_executor.h for how batches overlap).
  EncoderOutput run_on_streams(const Batch &batch) {
    Runner &r = runner();
    // 1. Pack the inputs into one pinned block. The runner reuses such blocks batch after batch:
    //    this one goes back to the pool when run() returns, after every copy from it has finished.
    std::vector<size_t> in_offsets;
    const size_t in_bytes = pack_offsets(
        batch.inputs, [](const Tensor &t) { return t.nbytes; }, in_offsets);
    StagingBuffer in_block = staging_->acquire(in_bytes);
    auto *in_base = static_cast<uint8_t *>(in_block.data);
    for (size_t i = 0; i < batch.inputs.size(); ++i) {
      if (batch.inputs[i].nbytes > 0)
        std::memcpy(in_base + in_offsets[i], batch.inputs[i].data, batch.inputs[i].nbytes);
    }

    std::vector<at::Tensor> inputs;
    inputs.reserve(batch.inputs.size());
    // Declared out here so that, when something below throws, the output block is released only
    // after the catch below has waited for the copies into it.
    StagingBuffer out_block;
    try {
      // 2. Host to device on the copy stream. The device tensors are allocated on the copy
      //    stream (the current one here) and used on the compute stream: record_stream tells the
      //    caching allocator not to reuse their memory before the compute stream is past them.
      {
        c10::StreamGuard on_copy(r.copy);
        for (size_t i = 0; i < batch.inputs.size(); ++i) {
          const Tensor &t = batch.inputs[i];
          const at::TensorOptions type(to_scalar_type(t.dtype));
          at::Tensor host = at::from_blob(in_base + in_offsets[i], t.shape, type);
          at::Tensor dev = at::empty(t.shape, type.device(cuda_device_));
          dev.copy_(host, /*non_blocking=*/true);
          dev.record_stream(r.compute);
          inputs.push_back(std::move(dev));
        }
        r.inputs_copied.record(r.copy);
      }
      // 3. The forward on the compute stream, after the copy. The model's own allocations are
      //    made on the compute stream too, as it is the current one.
      std::vector<at::Tensor> outs;
      {
        c10::StreamGuard on_compute(r.compute);
        r.inputs_copied.block(r.compute);
        outs = forward(inputs, r.compute.native_handle());
        r.outputs_computed.record(r.compute);
      }
      check_outputs(outs);
      // 4. Device to host into one pinned block on the copy stream, after the forward; then wait
      //    for that copy. The block is leased to the returned tensors: it goes back to the pool
      //    only when the last of them (and every slice the engine cut from them) is released.
      std::vector<size_t> out_offsets;
      out_block = staging_->acquire(pack_offsets(
          outs, [](const at::Tensor &o) { return o.nbytes(); }, out_offsets));
      auto *out_base = static_cast<uint8_t *>(out_block.data);
      {
        c10::StreamGuard on_copy(r.copy);
        r.outputs_computed.block(r.copy);
        for (size_t i = 0; i < outs.size(); ++i) {
          at::Tensor host =
              at::from_blob(out_base + out_offsets[i], outs[i].sizes(), at::TensorOptions(outs[i].scalar_type()));
          host.copy_(outs[i], /*non_blocking=*/true); // strided outputs come back contiguous
          if (outs[i].device().is_cuda()) outs[i].record_stream(r.copy);
        }
        r.outputs_copied.record(r.copy);
      }
      // After this every copy from the input block has finished as well: the output copy waited
      // for the forward, which waited for the input copy.
      r.outputs_copied.synchronize();
      EncoderOutput result;
      for (size_t i = 0; i < outs.size(); ++i)
        result.outputs.push_back(output_view(i, outs[i], out_base + out_offsets[i], out_block.owner));
      return result;
    } catch (...) {
      // Neither block may go back to the pool (and be refilled by another batch) while a copy
      // from or into it may still run, so wait for everything on the copy stream before they are
      // released (the copies may have failed halfway, before their event was recorded). A block is
      // only released before its copy finished when that wait itself fails: a CUDA error, which
      // leaves the context unusable for any later copy.
      try {
        r.copy.synchronize();
      } catch (...) {
        // A failed wait is a CUDA error too; the original error is the one to report.
      }
      throw;
    }
  }

  c10::Device cuda_device_{c10::DeviceType::CUDA, 0};
  std::unique_ptr<StagingPool> staging_; // CUDA with streams only
  std::mutex runners_mu_;
  std::unordered_map<std::thread::id, std::unique_ptr<Runner>> runners_;
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
  std::vector<at::Tensor> forward(std::vector<at::Tensor> &inputs, void *stream_handle) override {
    try {
      return loader_->run(inputs, stream_handle);
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
  // TorchScript runs on the thread's current stream (the compute stream on the streams path).
  std::vector<at::Tensor> forward(std::vector<at::Tensor> &inputs, void * /*stream_handle*/) override {
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
