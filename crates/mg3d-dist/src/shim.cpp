// The c10d parts mg3d uses, behind a C interface: a TCPStore rendezvous, a Gloo process group,
// and broadcast / all-reduce (sum) / all-gather / barrier on tch's tensors (`at::Tensor*` is
// tch's C_tensor handle). Every entry point catches C++ exceptions and returns their message.

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <cstring>
#include <string>
#include <vector>

namespace {

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
  std::chrono::milliseconds timeout;
};

char* copy(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  std::memcpy(out, s.c_str(), s.size() + 1);
  return out;
}

template <typename F>
int guarded(char** err, F&& f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    *err = copy(e.what());
  } catch (...) {
    *err = copy("unknown C++ exception");
  }
  return 1;
}

void wait(Group* g, const c10::intrusive_ptr<c10d::Work>& work) {
  work->wait(g->timeout);
}

}  // namespace

extern "C" {

void mg3d_dist_free_string(char* s) { std::free(s); }

// Rendezvous at host:port (rank 0 serves the store) and a Gloo group bound to `bind_host`.
void* mg3d_dist_init(const char* host, int port, int rank, int world, const char* bind_host,
                     long timeout_ms, char** err) {
  Group* out = nullptr;
  guarded(err, [&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<std::uint16_t>(port);
    opts.isServer = rank == 0;
    opts.numWorkers = world;
    opts.timeout = timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    auto store = c10::make_intrusive<c10d::PrefixStore>("default_pg", tcp);
    auto options = c10d::ProcessGroupGloo::Options::create(timeout);
    options->devices.push_back(
        c10d::ProcessGroupGloo::createDeviceForHostname(std::string(bind_host)));
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, options);
    out = new Group{store, pg, timeout};
  });
  return out;
}

void mg3d_dist_free(void* g) { delete static_cast<Group*>(g); }

int mg3d_dist_broadcast(void* gp, at::Tensor* t, int root, char** err) {
  return guarded(err, [&] {
    auto* g = static_cast<Group*>(gp);
    std::vector<at::Tensor> ts{*t};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    wait(g, g->pg->broadcast(ts, o));
  });
}

int mg3d_dist_all_reduce_sum(void* gp, at::Tensor* t, char** err) {
  return guarded(err, [&] {
    auto* g = static_cast<Group*>(gp);
    std::vector<at::Tensor> ts{*t};
    c10d::AllreduceOptions o;
    o.reduceOp = c10d::ReduceOp::SUM;
    wait(g, g->pg->allreduce(ts, o));
  });
}

// `out` (world x the shape of `t`, contiguous) receives every rank's `t` in rank order.
int mg3d_dist_all_gather(void* gp, at::Tensor* t, at::Tensor* out, char** err) {
  return guarded(err, [&] {
    auto* g = static_cast<Group*>(gp);
    std::vector<at::Tensor> in{t->contiguous()};
    std::vector<std::vector<at::Tensor>> outs(1);
    for (int64_t r = 0; r < out->size(0); ++r) outs[0].push_back(out->select(0, r));
    wait(g, g->pg->allgather(outs, in));
  });
}

int mg3d_dist_barrier(void* gp, char** err) {
  return guarded(err, [&] {
    auto* g = static_cast<Group*>(gp);
    wait(g, g->pg->barrier());
  });
}

}  // extern "C"
