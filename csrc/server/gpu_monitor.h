// GPU gauges for /metrics from NVML (the NVIDIA driver's management library), loaded at run time
// with dlopen: the server has no build dependency on it, and on a machine without an NVIDIA
// driver the gauges are simply absent.
//
// Series (label gpu = the NVML device index, which is the CUDA index unless CUDA_VISIBLE_DEVICES
// reorders them):
//   jit_gpu_memory_used_bytes{gpu}, jit_gpu_memory_total_bytes{gpu}
//   jit_gpu_utilization_ratio{gpu}         fraction of the last sample period (1/6 to 1 s) in which a
//                                          kernel ran, 0..1
//   jit_gpu_memory_utilization_ratio{gpu}  fraction in which device memory was read or written
// They describe the whole device, other processes included. jit_compute_seconds{encoder} gives
// this server's own compute time per batch.
#pragma once

#include <memory>
#include <string>

#include "common/metrics.h"

namespace jit::server {

class GpuMonitor {
public:
  // Loads NVML and initialises it. Returns null, with the reason in *why, when the library
  // cannot be loaded (no NVIDIA driver), lacks a symbol, or nvmlInit fails. `library` is the
  // file dlopen looks for (tests pass a missing one).
  static std::unique_ptr<GpuMonitor> open(std::string *why, const std::string &library = "libnvidia-ml.so.1");
  ~GpuMonitor();
  GpuMonitor(const GpuMonitor &) = delete;
  GpuMonitor &operator=(const GpuMonitor &) = delete;

  // Devices NVML reports.
  unsigned device_count() const;

  // Reads every device and sets its gauges in `registry`; a device whose query fails keeps its
  // last values. Thread-safe (each /metrics scrape calls it).
  void update(metrics::Registry &registry) const;

private:
  struct Api;
  explicit GpuMonitor(std::unique_ptr<Api> api);
  std::unique_ptr<Api> api_;
};

} // namespace jit::server
