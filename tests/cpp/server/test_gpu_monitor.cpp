// GPU gauges from NVML (server/gpu_monitor.h): a missing library is reported, not fatal; with an
// NVIDIA driver, every device gets its memory and utilization gauges.
#include <gtest/gtest.h>

#include <string>

#include "common/metrics.h"
#include "server/gpu_monitor.h"

namespace jit::server {
namespace {

TEST(GpuMonitor, AMissingLibraryIsReportedWithItsName) {
  std::string why;
  EXPECT_EQ(GpuMonitor::open(&why, "libjit-no-such-nvml.so.1"), nullptr);
  EXPECT_NE(why.find("cannot load libjit-no-such-nvml.so.1"), std::string::npos) << why;
}

TEST(GpuMonitor, EveryDeviceGetsItsGauges) {
  std::string why;
  std::unique_ptr<GpuMonitor> gpu = GpuMonitor::open(&why);
  if (!gpu) GTEST_SKIP() << "no NVIDIA driver: " << why;
  ASSERT_GT(gpu->device_count(), 0u);
  metrics::Registry registry;
  gpu->update(registry);
  const std::string text = registry.render();
  for (const char *series : {"jit_gpu_memory_used_bytes{gpu=\"0\"}", "jit_gpu_memory_total_bytes{gpu=\"0\"}",
                             "jit_gpu_utilization_ratio{gpu=\"0\"}", "jit_gpu_memory_utilization_ratio{gpu=\"0\"}"}) {
    EXPECT_NE(text.find(series), std::string::npos) << series << "\n" << text;
  }
  EXPECT_EQ(text.find("jit_gpu_memory_total_bytes{gpu=\"0\"} 0\n"), std::string::npos) << text;
}

} // namespace
} // namespace jit::server
