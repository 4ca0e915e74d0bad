// The Redis tier: entries shared between hosts, under "<prefix><key hex>", expiring after
// redis_ttl_s (Redis entries are not pruned: they age out).
//
// Redis is optional infrastructure, so every failure is a miss and never an error or a hang:
// connects and commands have timeouts, a lookup waits at most redis_pool_wait_ms for a pooled
// connection, and after any connection failure the tier stands aside (every call a quick miss) for
// redis_retry_after_ms before it tries to connect again.
#include "cache/cache.h"

#ifdef JIT_HAVE_REDIS

#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <mutex>
#include <vector>

#include <hiredis/hiredis.h>
#include <sys/time.h>

namespace jit::cache {

namespace {

using Clock = std::chrono::steady_clock;

struct RedisUrl {
  std::string host = "127.0.0.1";
  int port = 6379;
  int db = 0;
  std::string password;
};

RedisUrl parse_url(const std::string &url) {
  const std::string scheme = "redis://";
  if (url.compare(0, scheme.size(), scheme) != 0) throw CacheError("redis_url must start with redis://: '" + url + "'");
  std::string rest = url.substr(scheme.size());
  RedisUrl out;
  size_t at = rest.rfind('@');
  if (at != std::string::npos) {
    std::string auth = rest.substr(0, at);
    size_t colon = auth.find(':');
    out.password = colon == std::string::npos ? auth : auth.substr(colon + 1);
    rest = rest.substr(at + 1);
  }
  size_t slash = rest.find('/');
  std::string hostport = rest.substr(0, slash);
  if (slash != std::string::npos && slash + 1 < rest.size()) {
    try {
      size_t used = 0;
      out.db = std::stoi(rest.substr(slash + 1), &used);
      if (used != rest.size() - slash - 1 || out.db < 0) throw std::invalid_argument("db");
    } catch (const std::exception &) {
      throw CacheError("redis_url has a bad database number: '" + url + "'");
    }
  }
  size_t colon = hostport.rfind(':');
  if (colon != std::string::npos) {
    try {
      size_t used = 0;
      out.port = std::stoi(hostport.substr(colon + 1), &used);
      if (used != hostport.size() - colon - 1 || out.port <= 0 || out.port > 65535) throw std::invalid_argument("port");
    } catch (const std::exception &) {
      throw CacheError("redis_url has a bad port: '" + url + "'");
    }
    hostport = hostport.substr(0, colon);
  }
  if (!hostport.empty()) out.host = hostport;
  return out;
}

timeval to_timeval(int ms) {
  timeval tv;
  tv.tv_sec = ms / 1000;
  tv.tv_usec = (ms % 1000) * 1000;
  return tv;
}

struct Reply {
  redisReply *r = nullptr;
  explicit Reply(void *p) : r(static_cast<redisReply *>(p)) {}
  ~Reply() {
    if (r) freeReplyObject(r);
  }
  Reply(const Reply &) = delete;
  Reply &operator=(const Reply &) = delete;
};

class RedisTier final : public Tier {
public:
  RedisTier(const CacheSettings &s, metrics::Registry &registry)
      : settings_(s), url_(parse_url(s.redis_url)), metrics_(registry, name_),
        up_(registry.gauge("jit_cache_tier_up", "Whether a cache tier answers (Redis: 0 during an outage)",
                           {{"tier", name_}})) {
    up_.set(1);
    // hiredis writes with write(2): a peer that went away would raise SIGPIPE and kill the process.
    struct sigaction old {};
    if (sigaction(SIGPIPE, nullptr, &old) == 0 && old.sa_handler == SIG_DFL) std::signal(SIGPIPE, SIG_IGN);
  }

  ~RedisTier() override {
    for (redisContext *c : idle_)
      redisFree(c);
  }

  const std::string &name() const override { return name_; }

  std::optional<Entry> get(const CacheKey &key) override {
    std::string k = settings_.redis_key_prefix + key.hex();
    std::shared_ptr<const std::string> value;
    bool ok = with_connection([&](redisContext *c) {
      const char *argv[] = {"GET", k.c_str()};
      size_t lens[] = {3, k.size()};
      Reply rep(redisCommandArgv(c, 2, argv, lens));
      if (!rep.r) return false;
      if (rep.r->type == REDIS_REPLY_STRING) value = std::make_shared<const std::string>(rep.r->str, rep.r->len);
      return true;
    });
    if (!ok || !value) {
      metrics_.misses.inc();
      return std::nullopt;
    }
    auto entry = Entry::parse(key, value);
    if (!entry) {
      metrics_.corrupt.inc();
      metrics_.misses.inc();
      erase(key);
      return std::nullopt;
    }
    metrics_.hits.inc();
    return entry;
  }

  void put(const CacheKey &key, const Entry &entry) override {
    std::string k = settings_.redis_key_prefix + key.hex();
    std::string ttl = std::to_string(settings_.redis_ttl_s);
    const std::string &v = *entry.frame();
    const bool stored = with_connection([&](redisContext *c) {
      const char *argv[] = {"SET", k.c_str(), v.data(), "EX", ttl.c_str()};
      size_t lens[] = {3, k.size(), v.size(), 2, ttl.size()};
      Reply rep(redisCommandArgv(c, settings_.redis_ttl_s > 0 ? 5 : 3, argv, lens));
      return rep.r != nullptr;
    });
    if (!stored) metrics_.write_errors.inc(); // down or failing: the outage is logged once, in mark_down_locked()
  }

  void erase(const CacheKey &key) override {
    std::string k = settings_.redis_key_prefix + key.hex();
    with_connection([&](redisContext *c) {
      const char *argv[] = {"DEL", k.c_str()};
      size_t lens[] = {3, k.size()};
      Reply rep(redisCommandArgv(c, 2, argv, lens));
      return rep.r != nullptr;
    });
  }

  // Entries and bytes are not known per prefix on a shared Redis: reported as 0.
  TierStats stats() const override { return metrics_.stats(name_); }

private:
  // Runs `fn` on a pooled connection. fn returns false on a connection failure (a null reply):
  // the connection is dropped and the tier stands aside. Returns false when no command ran or it failed.
  template <class Fn> bool with_connection(Fn &&fn) {
    redisContext *c = acquire();
    if (!c) return false;
    bool ok = fn(c) && c->err == 0;
    release(c, ok);
    return ok;
  }

  redisContext *acquire() {
    std::unique_lock<std::mutex> lock(mu_);
    auto deadline = Clock::now() + std::chrono::milliseconds(settings_.redis_pool_wait_ms);
    for (;;) {
      if (Clock::now() < down_until_) return nullptr;
      if (!idle_.empty()) {
        redisContext *c = idle_.back();
        idle_.pop_back();
        return c;
      }
      if (open_ < settings_.redis_pool_size) {
        ++open_;
        lock.unlock();
        redisContext *c = connect();
        if (c) return c;
        lock.lock();
        --open_;
        mark_down_locked();
        return nullptr;
      }
      if (cv_.wait_until(lock, deadline) == std::cv_status::timeout) return nullptr;
    }
  }

  void release(redisContext *c, bool ok) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (ok) {
        idle_.push_back(c);
        if (down_) {
          down_ = false;
          up_.set(1);
          std::fprintf(stderr, "jit-embedding cache: redis at %s:%d is back; using it again\n", url_.host.c_str(),
                       url_.port);
        }
      } else {
        redisFree(c);
        --open_;
        mark_down_locked();
      }
    }
    cv_.notify_one();
  }

  // After a failure the idle connections are most likely dead too: drop them, so that the first
  // attempt after the pause reconnects instead of tripping over a stale socket.
  void mark_down_locked() {
    down_until_ = Clock::now() + std::chrono::milliseconds(settings_.redis_retry_after_ms);
    if (!down_) {
      // Once per outage, not per request: the lower tiers and the encoder carry on meanwhile.
      down_ = true;
      up_.set(0);
      std::fprintf(stderr,
                   "jit-embedding cache: warning: redis at %s:%d is unreachable or failing; serving from the other "
                   "tiers and retrying every %d ms\n",
                   url_.host.c_str(), url_.port, settings_.redis_retry_after_ms);
    }
    for (redisContext *c : idle_)
      redisFree(c);
    open_ -= idle_.size();
    idle_.clear();
    cv_.notify_all();
  }

  redisContext *connect() {
    redisContext *c =
        redisConnectWithTimeout(url_.host.c_str(), url_.port, to_timeval(settings_.redis_connect_timeout_ms));
    if (!c) return nullptr;
    if (c->err || redisSetTimeout(c, to_timeval(settings_.redis_io_timeout_ms)) != REDIS_OK) {
      redisFree(c);
      return nullptr;
    }
    auto command_ok = [&](std::vector<std::string> args) {
      std::vector<const char *> argv;
      std::vector<size_t> lens;
      for (const auto &a : args) {
        argv.push_back(a.c_str());
        lens.push_back(a.size());
      }
      Reply rep(redisCommandArgv(c, static_cast<int>(argv.size()), argv.data(), lens.data()));
      return rep.r && rep.r->type != REDIS_REPLY_ERROR;
    };
    if ((!url_.password.empty() && !command_ok({"AUTH", url_.password})) ||
        (url_.db != 0 && !command_ok({"SELECT", std::to_string(url_.db)}))) {
      redisFree(c);
      return nullptr;
    }
    return c;
  }

  const std::string name_ = "redis";
  CacheSettings settings_;
  RedisUrl url_;
  TierMetrics metrics_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<redisContext *> idle_;
  size_t open_ = 0; // connections in idle_ or lent out
  Clock::time_point down_until_{};
  bool down_ = false; // between a failure and the next command that works (guarded by mu_)
  metrics::Gauge &up_;
};

} // namespace

bool redis_available() {
  return true;
}

std::unique_ptr<Tier> make_redis_tier(const CacheSettings &settings, metrics::Registry &registry) {
  if (settings.redis_pool_size == 0) throw CacheError("redis_pool_size must be at least 1");
  return std::make_unique<RedisTier>(settings, registry);
}

} // namespace jit::cache

#else // built without Redis

namespace jit::cache {

bool redis_available() {
  return false;
}

std::unique_ptr<Tier> make_redis_tier(const CacheSettings &, metrics::Registry &) {
  throw CacheError("this build has no Redis support (CMake JIT_WITH_REDIS found no libhiredis-dev)");
}

} // namespace jit::cache

#endif
