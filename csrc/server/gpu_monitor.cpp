// NVML through dlopen (gpu_monitor.h). The few entry points used are declared here from NVML's
// documented C API (nvml.h is not installed with the driver, and this file must build without it):
// every function returns nvmlReturn_t (an int, 0 = NVML_SUCCESS), and a device is an opaque pointer.
#include "server/gpu_monitor.h"

#include <dlfcn.h>

#include <string>

namespace jit::server {

namespace {

using NvmlReturn = int;
using NvmlDevice = void *;
constexpr NvmlReturn kNvmlSuccess = 0;

struct NvmlMemory { // nvmlMemory_t (v1)
  unsigned long long total;
  unsigned long long free;
  unsigned long long used;
};

struct NvmlUtilization { // nvmlUtilization_t: percentages over the last sample period
  unsigned int gpu;
  unsigned int memory;
};

} // namespace

struct GpuMonitor::Api {
  void *library = nullptr;
  NvmlReturn (*init)() = nullptr;
  NvmlReturn (*shutdown)() = nullptr;
  NvmlReturn (*device_count)(unsigned int *) = nullptr;
  NvmlReturn (*device_by_index)(unsigned int, NvmlDevice *) = nullptr;
  NvmlReturn (*memory_info)(NvmlDevice, NvmlMemory *) = nullptr;
  NvmlReturn (*utilization)(NvmlDevice, NvmlUtilization *) = nullptr;
  unsigned int devices = 0;

  ~Api() {
    if (library != nullptr) dlclose(library);
  }

  template <typename Fn> bool bind(Fn &fn, const char *name, std::string *why) {
    fn = reinterpret_cast<Fn>(dlsym(library, name));
    if (fn == nullptr && why != nullptr) *why = std::string("NVML lacks ") + name;
    return fn != nullptr;
  }
};

std::unique_ptr<GpuMonitor> GpuMonitor::open(std::string *why, const std::string &library) {
  auto api = std::make_unique<Api>();
  api->library = dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (api->library == nullptr) {
    if (why != nullptr) *why = "cannot load " + library + " (no NVIDIA driver?): " + dlerror();
    return nullptr;
  }
  // The _v2 entry points are the current ones (the unversioned names are kept for old drivers).
  if (!api->bind(api->init, "nvmlInit_v2", why) || !api->bind(api->shutdown, "nvmlShutdown", why) ||
      !api->bind(api->device_count, "nvmlDeviceGetCount_v2", why) ||
      !api->bind(api->device_by_index, "nvmlDeviceGetHandleByIndex_v2", why) ||
      !api->bind(api->memory_info, "nvmlDeviceGetMemoryInfo", why) ||
      !api->bind(api->utilization, "nvmlDeviceGetUtilizationRates", why)) {
    return nullptr;
  }
  if (const NvmlReturn r = api->init(); r != kNvmlSuccess) {
    if (why != nullptr) *why = "nvmlInit failed with NVML error " + std::to_string(r);
    return nullptr;
  }
  if (api->device_count(&api->devices) != kNvmlSuccess) api->devices = 0;
  return std::unique_ptr<GpuMonitor>(new GpuMonitor(std::move(api)));
}

GpuMonitor::GpuMonitor(std::unique_ptr<Api> api) : api_(std::move(api)) {}

GpuMonitor::~GpuMonitor() {
  api_->shutdown();
}

unsigned GpuMonitor::device_count() const {
  return api_->devices;
}

void GpuMonitor::update(metrics::Registry &registry) const {
  for (unsigned int i = 0; i < api_->devices; ++i) {
    NvmlDevice device = nullptr;
    if (api_->device_by_index(i, &device) != kNvmlSuccess) continue;
    const metrics::Labels labels{{"gpu", std::to_string(i)}};
    NvmlMemory memory{};
    if (api_->memory_info(device, &memory) == kNvmlSuccess) {
      registry.gauge("jit_gpu_memory_used_bytes", "Device memory in use (all processes), from NVML.", labels)
          .set(static_cast<double>(memory.used));
      registry.gauge("jit_gpu_memory_total_bytes", "Device memory in all, from NVML.", labels)
          .set(static_cast<double>(memory.total));
    }
    NvmlUtilization util{};
    if (api_->utilization(device, &util) == kNvmlSuccess) {
      registry
          .gauge("jit_gpu_utilization_ratio",
                 "Fraction of NVML's last sample period in which a kernel ran on the device.", labels)
          .set(util.gpu / 100.0);
      registry
          .gauge("jit_gpu_memory_utilization_ratio",
                 "Fraction of NVML's last sample period in which device memory was read or written.", labels)
          .set(util.memory / 100.0);
    }
  }
}

} // namespace jit::server
