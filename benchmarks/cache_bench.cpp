// jit-cache-bench: the cache library (csrc/cache) measured against plain baselines on this machine.
//
// Modes (each prints one JSON object per measurement on stdout; diagnostics go to stderr):
//
//   --info
//     The tiers this build has: {"mode": "info", "rocksdb": bool, "redis": bool}.
//
//   --hits TIERS [--shape D0,D1,...] [--entries N] [--gets M] [--dir DIR] [--redis-url URL] [--seed S]
//              [--drop-cache auto|drop_caches|fadvise|none]
//     Hit latency. TIERS is a comma list of memory, rocksdb, redis, tiered (or "all": every tier
//     this build has; redis and the Redis part of tiered only with --redis-url). Each tier is filled
//     with N entries of one float32 tensor of the given shape (random bits, so not compressible), then
//     M get()s of keys drawn at random from the N are timed one by one (steady_clock around get()
//     only: the caller's use and release of the entry are not counted). Prints p50/p99/mean/max in
//     microseconds and hits/s (M / the loop's wall time). Lines, one per measurement:
//       memory        the memory LRU (make_memory_tier), sized so that nothing is evicted
//       rocksdb cold  the database closed after the fill, opened and closed once more (recovery writes
//                     what the WAL held into a table file, which would otherwise be read from the page
//                     cache it was just written through), its files evicted from the page cache (see
//                     --drop-cache), reopened (empty block cache): min(M, N) distinct keys, each read once
//       rocksdb warm  then M gets of the keys the cold pass read: page cache warm, the block cache
//                     holding what fits in CacheSettings::rocksdb_block_cache_bytes
//       redis         the Redis tier at --redis-url (its keys under a per-process prefix, erased after)
//       tiered        TieredCache::from_settings with memory + RocksDB (+ Redis): filled through put()
//                     and flush(), so every get is a memory hit; "served_by_memory" counts them
//
//   --throughput [--value-bytes B] [--total-bytes T] [--dir DIR] [--seed S] [--drop-cache ...]
//     Disk MB/s of the RocksDB tier against plain files on the same disk, T/B values of one float32
//     tensor of B bytes (random bits), the same encoded entry frames on both sides (MB = 1e6 bytes
//     of frames). Writes are timed until the data is durable:
//       files     one file per value in a fresh directory (open, write, close), then every file and
//                 the directory fsync()ed
//       files_early_writeback
//                 the same, with sync_file_range(SYNC_FILE_RANGE_WRITE) before each close, so the
//                 disk writes start at once and the final fsyncs mostly wait for I/O under way (a
//                 careful plain-file writer; Linux only)
//       rocksdb   TieredCache holding only the RocksDB tier: put() of every value (a full write queue
//                 is retried after 200 us: nothing is dropped), flush(), the cache destroyed (the
//                 database closed), then every file in the database directory and the directory
//                 fsync()ed. RocksDB appends each value to its WAL and, at each memtable flush, to a
//                 table file (a WAL is deleted once its memtable is flushed, so it need not reach the
//                 disk); flushes and compactions run in its own background threads. "db_files_bytes"
//                 is the database's size on disk afterwards.
//     Reads: every value once, in a random order, after evicting the files from the page cache:
//       files     open, read into a fresh buffer, close
//       rocksdb   the database settled as for "rocksdb cold" above, evicted, reopened (not timed;
//                 "open_s"), then TieredCache::get of each key, which verifies the entry's checksums;
//                 "verify_s" is the time Entry::parse alone takes for all values in memory, to tell
//                 that share apart.
//     Every line but files' carries ratio_to_files = its MB/s / files MB/s (the rocksdb write line
//     also ratio_to_files_early_writeback). Writes run in the order above, each after the previous
//     one is durable.
//
// --drop-cache: how files are evicted from the page cache before a cold read. auto (default):
// "1" into /proc/sys/vm/drop_caches after sync() (root only; the whole machine's page cache, not its
// dentries and inodes), else fadvise.
// fadvise: POSIX_FADV_DONTNEED on each of the benchmark's files (unprivileged; clean pages only,
// hence after fsync). none: reads are warm. Every cold line reports the method that worked in
// "page_cache" and the fraction of the files' pages still resident afterwards (mincore) in
// "resident_after_drop", so a drop that did nothing shows; RocksDB lines also report it right after
// the reopen ("resident_after_open": what opening the database read back in).
//
// Everything lives in a fresh directory created under --dir (default: the system temp dir) and
// removed at exit. Exit status: 0, or 2 for bad arguments or a failed measurement (a miss where a hit
// was expected, an I/O error), with the reason on stderr.
#include "bench_json.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "cache/cache.h"
#include "common/metrics.h"
#include "common/types.h"

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using jit::cache::CacheKey;
using jit::cache::CacheSettings;
using jit::cache::Entry;
using jit::cache::Tier;
using jit::cache::TieredCache;

struct Options {
  std::string mode; // info, hits, throughput
  std::vector<std::string> tiers;
  std::vector<int64_t> shape{77, 768};
  size_t entries = 1000;
  size_t gets = 1000;
  size_t value_bytes = 128 * 1024;
  size_t total_bytes = 1ull << 30;
  std::string dir;
  std::string redis_url;
  std::string drop_cache = "auto";
  uint64_t seed = 1;
};

// A failed measurement: reported on stderr, exit status 2.
struct BenchError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] void die(const std::string &msg) {
  std::fprintf(stderr, "jit-cache-bench: %s\n", msg.c_str());
  std::exit(2);
}

void print_help() {
  std::printf("usage:\n"
              "  jit-cache-bench --info\n"
              "  jit-cache-bench --hits memory,rocksdb,redis,tiered|all [--shape 77,768] [--entries N] [--gets M]\n"
              "                  [--dir DIR] [--redis-url redis://127.0.0.1:PORT/0] [--seed S] [--drop-cache MODE]\n"
              "  jit-cache-bench --throughput [--value-bytes B] [--total-bytes T] [--dir DIR] [--seed S]\n"
              "                  [--drop-cache auto|drop_caches|fadvise|none]\n"
              "\n"
              "--hits: get() latency (p50/p99/mean us, hits/s) of each tier filled with N float32 entries.\n"
              "--throughput: RocksDB tier write (until durable) and cold read MB/s against one plain file\n"
              "per value on the same disk, and their ratio. One JSON object per measurement on stdout.\n");
}

size_t parse_size(const std::string &flag, const std::string &text, size_t min) {
  char *end = nullptr;
  errno = 0;
  const unsigned long long v = std::strtoull(text.c_str(), &end, 10);
  if (text.empty() || text[0] == '-' || *end != '\0' || errno != 0 || v < min)
    die(flag + " needs an integer >= " + std::to_string(min) + " (got '" + text + "')");
  return static_cast<size_t>(v);
}

std::vector<std::string> split(const std::string &s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, sep))
    if (!item.empty()) out.push_back(item);
  return out;
}

Options parse_args(int argc, char **argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) die(a + " needs a value");
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      print_help();
      std::exit(0);
    } else if (a == "--info") {
      o.mode = "info";
    } else if (a == "--hits") {
      o.mode = "hits";
      o.tiers = split(value(), ',');
    } else if (a == "--throughput") {
      o.mode = "throughput";
    } else if (a == "--shape") {
      o.shape.clear();
      for (const std::string &d : split(value(), ','))
        o.shape.push_back(static_cast<int64_t>(parse_size("--shape", d, 1)));
      if (o.shape.empty()) die("--shape needs dimensions, e.g. 77,768");
    } else if (a == "--entries") {
      o.entries = parse_size(a, value(), 1);
    } else if (a == "--gets") {
      o.gets = parse_size(a, value(), 1);
    } else if (a == "--value-bytes") {
      o.value_bytes = parse_size(a, value(), 4);
    } else if (a == "--total-bytes") {
      o.total_bytes = parse_size(a, value(), 1);
    } else if (a == "--dir") {
      o.dir = value();
    } else if (a == "--redis-url") {
      o.redis_url = value();
    } else if (a == "--seed") {
      o.seed = parse_size(a, value(), 0);
    } else if (a == "--drop-cache") {
      o.drop_cache = value();
      if (o.drop_cache != "auto" && o.drop_cache != "drop_caches" && o.drop_cache != "fadvise" &&
          o.drop_cache != "none")
        die("--drop-cache must be auto, drop_caches, fadvise or none");
    } else {
      die("unknown argument '" + a + "' (see --help)");
    }
  }
  if (o.mode.empty()) die("choose a mode: --info, --hits TIERS or --throughput (see --help)");
  if (o.value_bytes % 4 != 0) die("--value-bytes must be a multiple of 4 (float32 values)");
  return o;
}

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

using jit::bench::Json;

// ------------------------------------------------------------------------------------------ files
// A fresh directory under `parent` (created if missing), removed with the object.
struct WorkDir {
  fs::path path;
  explicit WorkDir(const std::string &parent) {
    fs::path base = parent.empty() ? fs::temp_directory_path() : fs::path(parent);
    fs::create_directories(base);
    std::string tmpl = (base / "jit-cache-bench-XXXXXX").string();
    if (mkdtemp(tmpl.data()) == nullptr) throw BenchError("mkdtemp under " + base.string() + ": " + strerror(errno));
    path = tmpl;
  }
  ~WorkDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  WorkDir(const WorkDir &) = delete;
  WorkDir &operator=(const WorkDir &) = delete;
};

[[noreturn]] void io_fail(const std::string &what, const fs::path &p) {
  throw BenchError(what + " " + p.string() + ": " + strerror(errno));
}

void fsync_path(const fs::path &p, bool directory) {
  int fd = ::open(p.c_str(), O_RDONLY | (directory ? O_DIRECTORY : 0));
  if (fd < 0) io_fail("open", p);
  if (::fsync(fd) != 0) io_fail("fsync", p);
  ::close(fd);
}

// The regular files directly in `dir`.
std::vector<fs::path> files_in(const fs::path &dir) {
  std::vector<fs::path> out;
  for (const auto &e : fs::directory_iterator(dir))
    if (e.is_regular_file()) out.push_back(e.path());
  return out;
}

// fsync()s every regular file in `dir`, then `dir` itself: what makes writes durable.
void fsync_dir_tree(const fs::path &dir) {
  for (const fs::path &p : files_in(dir))
    fsync_path(p, false);
  fsync_path(dir, true);
}

// The fraction of the pages of `files` held in the page cache (mincore), in [0, 1].
double resident_fraction(const std::vector<fs::path> &files) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  uint64_t total = 0, resident = 0;
  std::vector<unsigned char> vec;
  for (const fs::path &p : files) {
    int fd = ::open(p.c_str(), O_RDONLY);
    if (fd < 0) continue;
    struct stat st {};
    if (fstat(fd, &st) == 0 && st.st_size > 0) {
      const size_t len = static_cast<size_t>(st.st_size);
      void *m = mmap(nullptr, len, PROT_READ, MAP_SHARED, fd, 0);
      if (m != MAP_FAILED) {
        const size_t pages = (len + page - 1) / page;
        vec.assign(pages, 0);
        if (mincore(m, len, vec.data()) == 0) {
          total += pages;
          for (unsigned char v : vec)
            resident += v & 1;
        }
        munmap(m, len);
      }
    }
    ::close(fd);
  }
  return total ? static_cast<double>(resident) / static_cast<double>(total) : 0.0;
}

struct Drop {
  std::string method;        // "drop_caches", "fadvise" or "none (warm)"
  double resident_after = 0; // fraction of the files' pages still cached afterwards
};

// Evicts `files` from the page cache by `mode` (see the file comment). Never throws: a method that
// fails falls back to the next, and the result says what worked.
Drop drop_page_cache(const std::vector<fs::path> &files, const std::string &mode) {
  Drop d;
  if (mode == "none") {
    d.method = "none (warm)";
  } else {
    if (mode == "auto" || mode == "drop_caches") {
      ::sync();
      std::ofstream f("/proc/sys/vm/drop_caches");
      if (f && (f << "1\n") && f.flush()) d.method = "drop_caches";
    }
    if (d.method.empty()) {
      bool ok = !files.empty();
      for (const fs::path &p : files) {
        int fd = ::open(p.c_str(), O_RDONLY);
        if (fd < 0 || posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) != 0) ok = false;
        if (fd >= 0) ::close(fd);
      }
      d.method = ok ? "fadvise" : "none (warm: fadvise failed)";
    }
  }
  d.resident_after = resident_fraction(files);
  return d;
}

// Opens and closes the RocksDB tier at s.rocksdb_path: recovery writes what the WAL still holds into
// a table file, so that a later open reads only table files (none of them just written, hence
// cached) and replays nothing.
void settle_rocksdb(const CacheSettings &s) {
  jit::metrics::Registry registry;
  jit::cache::make_rocksdb_tier(s, registry);
}

// ------------------------------------------------------------------------------------------ entries
// `count` entries of one float32 tensor of `shape`, each its own key ("sample-<i>") and its own
// random bits (one random buffer, with the entry's index written over its first 8 bytes: values are
// incompressible and no two are equal).
struct Dataset {
  std::vector<CacheKey> keys;
  std::vector<Entry> entries;
  uint64_t frame_bytes = 0;   // sum of the encoded frames
  uint64_t payload_bytes = 0; // per entry: the raw tensor bytes
};

Dataset make_dataset(const std::vector<int64_t> &shape, size_t count, uint64_t seed) {
  Dataset ds;
  size_t numel = 1;
  for (int64_t d : shape)
    numel *= static_cast<size_t>(d);
  ds.payload_bytes = numel * sizeof(float);
  std::vector<uint32_t> bits(std::max<size_t>(numel, 2));
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i < bits.size(); i += 2) {
    uint64_t r = rng();
    bits[i] = static_cast<uint32_t>(r);
    if (i + 1 < bits.size()) bits[i + 1] = static_cast<uint32_t>(r >> 32);
  }
  for (auto &b : bits) // random finite floats: clear the top exponent bit so no NaN/Inf appears
    b &= 0xBFFFFFFFu;
  ds.keys.reserve(count);
  ds.entries.reserve(count);
  for (size_t i = 0; i < count; ++i) {
    uint64_t stamp = i;
    std::memcpy(bits.data(), &stamp, std::min<size_t>(sizeof stamp, ds.payload_bytes));
    CacheKey key = CacheKey::for_sample_key("jit-cache-bench", "v1", "sample-" + std::to_string(i));
    jit::TensorView v{"emb", jit::DType::kFloat32, shape, bits.data(), ds.payload_bytes};
    ds.entries.push_back(Entry::make(key, "jit-cache-bench", "v1", {v}));
    ds.frame_bytes += ds.entries.back().nbytes();
    ds.keys.push_back(key);
  }
  return ds;
}

// ------------------------------------------------------------------------------------------ hits
struct Latencies {
  std::vector<double> us; // of the hits
  size_t misses = 0;
  double wall_s = 0;
};

// Times tier-like `get(key)` for each of `keys` in order.
template <class Get> Latencies time_gets(const std::vector<CacheKey> &keys, Get &&get) {
  Latencies lat;
  lat.us.reserve(keys.size());
  const auto start = Clock::now();
  for (const CacheKey &k : keys) {
    const auto t0 = Clock::now();
    std::optional<Entry> e = get(k);
    const auto t1 = Clock::now();
    if (e)
      lat.us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    else
      ++lat.misses;
  } // the entry is released here, outside the timed span
  lat.wall_s = seconds_since(start);
  return lat;
}

double percentile(const std::vector<double> &sorted, double q) {
  if (sorted.empty()) return 0;
  size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(sorted.size())));
  return sorted[std::min(sorted.size() - 1, rank == 0 ? 0 : rank - 1)];
}

// One "hits" line. Throws BenchError when a get missed: every key asked for was put.
Json hits_json(const std::string &tier, const std::string &state, const Options &o, const Dataset &ds, Latencies lat) {
  std::sort(lat.us.begin(), lat.us.end());
  const double sum = std::accumulate(lat.us.begin(), lat.us.end(), 0.0);
  const size_t n = lat.us.size() + lat.misses;
  Json j;
  j.str("mode", "hits")
      .str("tier", tier)
      .str("state", state)
      .ints("shape", o.shape)
      .num("payload_bytes", static_cast<double>(ds.payload_bytes))
      .num("entry_bytes", static_cast<double>(ds.frame_bytes / std::max<size_t>(1, ds.entries.size())))
      .num("entries", static_cast<double>(ds.entries.size()))
      .num("gets", static_cast<double>(n))
      .num("misses", static_cast<double>(lat.misses))
      .num("p50_us", percentile(lat.us, 0.50))
      .num("p99_us", percentile(lat.us, 0.99))
      .num("mean_us", lat.us.empty() ? 0.0 : sum / static_cast<double>(lat.us.size()))
      .num("max_us", lat.us.empty() ? 0.0 : lat.us.back())
      .num("hits_per_s", lat.wall_s > 0 ? static_cast<double>(lat.us.size()) / lat.wall_s : 0.0);
  if (lat.misses)
    throw BenchError(tier + " (" + state + "): " + std::to_string(lat.misses) + " of " + std::to_string(n) +
                     " gets missed; every key was put");
  return j;
}

// `count` keys drawn uniformly (with replacement) from `keys`.
std::vector<CacheKey> draw(const std::vector<CacheKey> &keys, size_t count, std::mt19937_64 &rng) {
  std::uniform_int_distribution<size_t> pick(0, keys.size() - 1);
  std::vector<CacheKey> out(count);
  for (auto &k : out)
    k = keys[pick(rng)];
  return out;
}

void hits_memory(const Options &o, const Dataset &ds, std::mt19937_64 &rng) {
  jit::metrics::Registry registry;
  CacheSettings s;
  s.memory_max_bytes = std::max<uint64_t>(1ull << 30, 4 * (ds.frame_bytes + 1024 * ds.entries.size()));
  auto tier = jit::cache::make_memory_tier(s, registry);
  for (size_t i = 0; i < ds.entries.size(); ++i)
    tier->put(ds.keys[i], ds.entries[i]);
  auto lat = time_gets(draw(ds.keys, o.gets, rng), [&](const CacheKey &k) { return tier->get(k); });
  hits_json("memory", "warm", o, ds, std::move(lat)).print();
}

void hits_rocksdb(const Options &o, const Dataset &ds, std::mt19937_64 &rng, const fs::path &dir) {
  CacheSettings s;
  s.rocksdb_path = (dir / "hits-rocksdb").string();
  {
    jit::metrics::Registry registry;
    auto tier = jit::cache::make_rocksdb_tier(s, registry);
    for (size_t i = 0; i < ds.entries.size(); ++i)
      tier->put(ds.keys[i], ds.entries[i]);
  } // closed: what follows reads from the files
  settle_rocksdb(s);
  Drop drop = drop_page_cache(files_in(s.rocksdb_path), o.drop_cache);
  jit::metrics::Registry registry;
  auto tier = jit::cache::make_rocksdb_tier(s, registry);
  const double resident_at_start = resident_fraction(files_in(s.rocksdb_path));
  std::vector<CacheKey> cold = ds.keys;
  std::shuffle(cold.begin(), cold.end(), rng);
  cold.resize(std::min(o.gets, cold.size()));
  auto get = [&](const CacheKey &k) { return tier->get(k); };
  hits_json("rocksdb", "cold", o, ds, time_gets(cold, get))
      .str("page_cache", drop.method)
      .num("resident_after_drop", drop.resident_after)
      .num("resident_after_open", resident_at_start)
      .num("block_cache_bytes", static_cast<double>(s.rocksdb_block_cache_bytes))
      .print();
  hits_json("rocksdb", "warm", o, ds, time_gets(draw(cold, o.gets, rng), get))
      .num("block_cache_bytes", static_cast<double>(s.rocksdb_block_cache_bytes))
      .print();
}

void hits_redis(const Options &o, const Dataset &ds, std::mt19937_64 &rng) {
  jit::metrics::Registry registry;
  CacheSettings s;
  s.redis_url = o.redis_url;
  s.redis_key_prefix = "jit-cache-bench:" + std::to_string(::getpid()) + ":";
  auto tier = jit::cache::make_redis_tier(s, registry);
  for (size_t i = 0; i < ds.entries.size(); ++i)
    tier->put(ds.keys[i], ds.entries[i]);
  auto lat = time_gets(draw(ds.keys, o.gets, rng), [&](const CacheKey &k) { return tier->get(k); });
  for (const CacheKey &k : ds.keys)
    tier->erase(k);
  hits_json("redis", "warm", o, ds, std::move(lat)).str("redis_url", o.redis_url).print();
}

void hits_tiered(const Options &o, const Dataset &ds, std::mt19937_64 &rng, const fs::path &dir) {
  jit::metrics::Registry registry;
  CacheSettings s;
  s.memory_max_bytes = std::max<uint64_t>(1ull << 30, 4 * (ds.frame_bytes + 1024 * ds.entries.size()));
  if (jit::cache::rocksdb_available()) s.rocksdb_path = (dir / "hits-tiered").string();
  if (jit::cache::redis_available()) s.redis_url = o.redis_url;
  s.redis_key_prefix = "jit-cache-bench:" + std::to_string(::getpid()) + ":tiered:";
  auto cache = TieredCache::from_settings(s, registry);
  std::string tiers;
  for (size_t i = 0; i < cache->tier_count(); ++i)
    tiers += (i ? "+" : "") + cache->tier(i).name();
  for (size_t i = 0; i < ds.entries.size(); ++i) {
    while (!cache->put(ds.keys[i], ds.entries[i])) // a full queue: let the writer catch up, drop nothing
      cache->flush();
  }
  cache->flush();
  const uint64_t memory_hits_before = cache->stats().at(0).hits;
  auto lat = time_gets(draw(ds.keys, o.gets, rng), [&](const CacheKey &k) { return cache->get(k); });
  const uint64_t memory_hits = cache->stats().at(0).hits - memory_hits_before;
  for (const CacheKey &k : ds.keys)
    cache->erase(k);
  hits_json("tiered", "warm", o, ds, std::move(lat))
      .str("tiers", tiers)
      .num("served_by_memory", static_cast<double>(memory_hits))
      .print();
}

void run_hits(const Options &o) {
  std::vector<std::string> tiers = o.tiers;
  if (tiers.size() == 1 && tiers[0] == "all") {
    tiers = {"memory"};
    if (jit::cache::rocksdb_available()) tiers.push_back("rocksdb");
    if (jit::cache::redis_available() && !o.redis_url.empty()) tiers.push_back("redis");
    tiers.push_back("tiered");
  }
  for (const std::string &t : tiers) {
    if (t != "memory" && t != "rocksdb" && t != "redis" && t != "tiered")
      die("unknown tier '" + t + "' (memory, rocksdb, redis, tiered or all)");
    if (t == "rocksdb" && !jit::cache::rocksdb_available()) die("this build has no RocksDB tier");
    if (t == "redis" && !jit::cache::redis_available()) die("this build has no Redis tier");
    if (t == "redis" && o.redis_url.empty()) die("--hits redis needs --redis-url");
  }
  WorkDir dir(o.dir);
  const Dataset ds = make_dataset(o.shape, o.entries, o.seed);
  std::mt19937_64 rng(o.seed + 1);
  for (const std::string &t : tiers) {
    if (t == "memory") hits_memory(o, ds, rng);
    if (t == "rocksdb") hits_rocksdb(o, ds, rng, dir.path);
    if (t == "redis") hits_redis(o, ds, rng);
    if (t == "tiered") hits_tiered(o, ds, rng, dir.path);
  }
}

// ------------------------------------------------------------------------------------------ throughput
Json throughput_json(const std::string &op, const std::string &path, const Dataset &ds, double seconds) {
  Json j;
  j.str("mode", "throughput")
      .str("op", op)
      .str("path", path)
      .num("values", static_cast<double>(ds.entries.size()))
      .num("payload_bytes", static_cast<double>(ds.payload_bytes))
      .num("bytes", static_cast<double>(ds.frame_bytes))
      .num("seconds", seconds)
      .num("mb_per_s", static_cast<double>(ds.frame_bytes) / 1e6 / seconds);
  return j;
}

fs::path value_file(const fs::path &dir, size_t i) {
  return dir / (std::to_string(i) + ".bin");
}

// Writes each frame to its own file, then fsyncs every file and the directory. With
// `early_writeback`, each file's writeback is started before it is closed. Returns seconds.
double write_files(const Dataset &ds, const fs::path &dir, bool early_writeback) {
  fs::create_directories(dir);
  const auto t0 = Clock::now();
  for (size_t i = 0; i < ds.entries.size(); ++i) {
    const fs::path p = value_file(dir, i);
    int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) io_fail("open", p);
    const std::string &frame = *ds.entries[i].frame();
    size_t done = 0;
    while (done < frame.size()) {
      ssize_t n = ::write(fd, frame.data() + done, frame.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) io_fail("write", p);
      done += static_cast<size_t>(n);
    }
    if (early_writeback && sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE) != 0) io_fail("sync_file_range", p);
    if (::close(fd) != 0) io_fail("close", p);
  }
  fsync_dir_tree(dir);
  return seconds_since(t0);
}

// Reads every value file once in `order` into a fresh buffer. Returns seconds.
double read_files(const Dataset &ds, const fs::path &dir, const std::vector<size_t> &order) {
  uint64_t total = 0;
  const auto t0 = Clock::now();
  for (size_t i : order) {
    const fs::path p = value_file(dir, i);
    int fd = ::open(p.c_str(), O_RDONLY);
    if (fd < 0) io_fail("open", p);
    struct stat st {};
    if (fstat(fd, &st) != 0) io_fail("fstat", p);
    std::string buf(static_cast<size_t>(st.st_size), '\0');
    size_t done = 0;
    while (done < buf.size()) {
      ssize_t n = ::read(fd, buf.data() + done, buf.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) io_fail("read", p);
      done += static_cast<size_t>(n);
    }
    ::close(fd);
    total += done;
  }
  const double s = seconds_since(t0);
  if (total != ds.frame_bytes) throw BenchError("files: read " + std::to_string(total) + " bytes, wrote more");
  return s;
}

std::unique_ptr<TieredCache> rocksdb_only_cache(const CacheSettings &s, jit::metrics::Registry &registry) {
  std::vector<std::unique_ptr<Tier>> tiers;
  tiers.push_back(jit::cache::make_rocksdb_tier(s, registry));
  return std::make_unique<TieredCache>(std::move(tiers), s, registry);
}

// Puts every value through a RocksDB-only TieredCache until it is durable (see the file comment).
// Returns seconds; *retries counts puts repeated because the write queue was full.
double write_rocksdb(const Dataset &ds, const CacheSettings &s, uint64_t *retries) {
  jit::metrics::Registry registry;
  auto cache = rocksdb_only_cache(s, registry); // opening the database is not timed
  const auto t0 = Clock::now();
  for (size_t i = 0; i < ds.entries.size(); ++i) {
    while (!cache->put(ds.keys[i], ds.entries[i])) {
      ++*retries;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }
  cache->flush();
  cache.reset(); // closes the database
  fsync_dir_tree(s.rocksdb_path);
  return seconds_since(t0);
}

// Gets every value once in `order` from the reopened database. Returns seconds; *open_s is the
// (untimed) open, *resident the fraction of the database's files cached right after it. Throws
// BenchError on a miss.
double read_rocksdb(const Dataset &ds, const CacheSettings &s, const std::vector<size_t> &order, double *open_s,
                    double *resident) {
  jit::metrics::Registry registry;
  const auto t_open = Clock::now();
  auto cache = rocksdb_only_cache(s, registry);
  *open_s = seconds_since(t_open);
  *resident = resident_fraction(files_in(s.rocksdb_path));
  uint64_t total = 0;
  const auto t0 = Clock::now();
  for (size_t i : order) {
    std::optional<Entry> e = cache->get(ds.keys[i]);
    if (!e) throw BenchError("rocksdb: value " + std::to_string(i) + " missed after it was written");
    total += e->nbytes();
  }
  const double sec = seconds_since(t0);
  if (total != ds.frame_bytes) throw BenchError("rocksdb: read back a different number of bytes");
  return sec;
}

// Seconds Entry::parse takes for every frame in memory (the checksum share of a tier read).
double verify_seconds(const Dataset &ds) {
  const auto t0 = Clock::now();
  for (size_t i = 0; i < ds.entries.size(); ++i)
    if (!Entry::parse(ds.keys[i], ds.entries[i].frame())) throw BenchError("a frame did not parse");
  return seconds_since(t0);
}

void run_throughput(const Options &o) {
  if (!jit::cache::rocksdb_available()) die("--throughput needs the RocksDB tier, and this build has none");
  const size_t count = std::max<size_t>(1, o.total_bytes / o.value_bytes);
  WorkDir dir(o.dir);
  const Dataset ds = make_dataset({static_cast<int64_t>(o.value_bytes / 4)}, count, o.seed);
  const fs::path files_dir = dir.path / "files";
  CacheSettings s;
  s.rocksdb_path = (dir.path / "rocksdb").string();
  s.rocksdb_max_bytes = std::max<uint64_t>(s.rocksdb_max_bytes, 4 * ds.frame_bytes); // never prunes here

  // Writes, each until durable before the next starts.
  const double files_w = write_files(ds, files_dir, false);
  throughput_json("write", "files", ds, files_w).print();
  const double early_w = write_files(ds, dir.path / "files-early-writeback", true);
  throughput_json("write", "files_early_writeback", ds, early_w).num("ratio_to_files", files_w / early_w).print();
  fs::remove_all(dir.path / "files-early-writeback");
  uint64_t retries = 0;
  const double rocks_w = write_rocksdb(ds, s, &retries);
  throughput_json("write", "rocksdb", ds, rocks_w)
      .num("ratio_to_files", files_w / rocks_w)
      .num("ratio_to_files_early_writeback", early_w / rocks_w)
      .num("queue_full_retries", static_cast<double>(retries))
      .num("db_files_bytes",
           [&] {
             uint64_t n = 0;
             for (const fs::path &p : files_in(s.rocksdb_path))
               n += fs::file_size(p);
             return static_cast<double>(n);
           }())
      .print();

  // Reads, each after evicting its files from the page cache.
  std::vector<size_t> order(count);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937_64(o.seed + 2));
  const Drop fd = drop_page_cache(files_in(files_dir), o.drop_cache);
  const double files_r = read_files(ds, files_dir, order);
  throughput_json("read", "files", ds, files_r)
      .str("page_cache", fd.method)
      .num("resident_after_drop", fd.resident_after)
      .print();
  settle_rocksdb(s);
  const Drop rd = drop_page_cache(files_in(s.rocksdb_path), o.drop_cache);
  double open_s = 0, resident_at_start = 0;
  const double rocks_r = read_rocksdb(ds, s, order, &open_s, &resident_at_start);
  throughput_json("read", "rocksdb", ds, rocks_r)
      .num("ratio_to_files", files_r / rocks_r)
      .str("page_cache", rd.method)
      .num("resident_after_drop", rd.resident_after)
      .num("resident_after_open", resident_at_start)
      .num("open_s", open_s)
      .num("verify_s", verify_seconds(ds))
      .num("block_cache_bytes", static_cast<double>(s.rocksdb_block_cache_bytes))
      .print();
}

} // namespace

int main(int argc, char **argv) {
  const Options o = parse_args(argc, argv);
  try {
    if (o.mode == "info") {
      Json()
          .str("mode", "info")
          .boolean("rocksdb", jit::cache::rocksdb_available())
          .boolean("redis", jit::cache::redis_available())
          .print();
    } else if (o.mode == "hits") {
      run_hits(o);
    } else {
      run_throughput(o);
    }
  } catch (const std::exception &e) { // BenchError, CacheError, filesystem_error
    die(e.what());
  }
  return 0;
}
