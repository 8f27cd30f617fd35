// Ranks in one process for the tests: K threads, each a rank with its own Communicator, joined through shared
// memory (sums in rank order, as MpiCommunicator adds them). test_distributed and test_train_distributed.
#pragma once

#include <natgrad/distributed/communicator.h>

#include <algorithm>
#include <condition_variable>
#include <exception>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace natgrad {
namespace test {

// K threads that meet at barriers; each rank publishes a pointer, then reads the others'.
class ThreadGroup {
 public:
  explicit ThreadGroup(int K) : K_(K), slots_(static_cast<std::size_t>(K)), texts_(static_cast<std::size_t>(K)) {}
  int size() const { return K_; }
  void arrive() {
    std::unique_lock<std::mutex> lock(mutex_);
    const long generation = generation_;
    if (++count_ == K_) {
      count_ = 0;
      ++generation_;
      cv_.notify_all();
    } else {
      cv_.wait(lock, [&] { return generation != generation_; });
    }
  }
  std::vector<const void*>& slots() { return slots_; }
  std::vector<std::string>& texts() { return texts_; }

 private:
  int K_;
  std::mutex mutex_;
  std::condition_variable cv_;
  int count_ = 0;
  long generation_ = 0;
  std::vector<const void*> slots_;
  std::vector<std::string> texts_;
};

class ThreadCommunicator final : public Communicator {
 public:
  ThreadCommunicator(ThreadGroup& group, int rank) : g_(group), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return g_.size(); }
  void sum(float* x, Index n) const override { sum_impl(x, n); }
  void sum(double* x, Index n) const override { sum_impl(x, n); }
  bool broadcast(bool flag) const override {
    bool mine = flag;
    g_.slots()[static_cast<std::size_t>(rank_)] = &mine;
    g_.arrive();
    const bool out = *static_cast<const bool*>(g_.slots()[0]);
    g_.arrive();
    return out;
  }
  std::string first_error(const std::string& mine) const override {
    g_.texts()[static_cast<std::size_t>(rank_)] = mine;
    g_.arrive();
    std::string out;
    for (const std::string& t : g_.texts())
      if (!t.empty()) {
        out = t;
        break;
      }
    g_.arrive();
    return out;
  }
  double max(double value) const override {
    g_.slots()[static_cast<std::size_t>(rank_)] = &value;
    g_.arrive();
    double out = value;
    for (const void* p : g_.slots()) out = std::max(out, *static_cast<const double*>(p));
    g_.arrive();
    return out;
  }

 private:
  template <typename T>
  void sum_impl(T* x, Index n) const {
    g_.slots()[static_cast<std::size_t>(rank_)] = x;
    g_.arrive();
    std::vector<T> total(static_cast<const T*>(g_.slots()[0]), static_cast<const T*>(g_.slots()[0]) + n);
    for (int r = 1; r < g_.size(); ++r) {  // rank order
      const T* part = static_cast<const T*>(g_.slots()[static_cast<std::size_t>(r)]);
      for (Index i = 0; i < n; ++i) total[static_cast<std::size_t>(i)] += part[i];
    }
    g_.arrive();  // every rank has read every part
    std::copy(total.begin(), total.end(), x);
  }
  ThreadGroup& g_;
  int rank_;
};

// Runs body(rank, comm) on K threads; rethrows nothing, returns each rank's exception message ("" if none).
inline std::vector<std::string> on_ranks(int K, const std::function<void(int, const Communicator&)>& body) {
  ThreadGroup group(K);
  std::vector<std::string> errors(static_cast<std::size_t>(K));
  std::vector<std::thread> threads;
  for (int r = 0; r < K; ++r)
    threads.emplace_back([&, r] {
      ThreadCommunicator comm(group, r);
      try {
        body(r, comm);
      } catch (const std::exception& e) {
        errors[static_cast<std::size_t>(r)] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  return errors;
}

}  // namespace test
}  // namespace natgrad
