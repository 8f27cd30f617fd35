// The parallel passes of a FisherOperator over its cached forward pass (fisher_state.h): the forward pass,
// phase A (per-chunk heads and the backpropagation of their cotangents), phases B and C (the parameter
// gradient from the stored cotangents) and the squared per-sample gradients. Every pass follows the plan
// (fisher_plan.h), so its result does not depend on the number of threads.
#include <natgrad/core/interrupted.h>
#include <natgrad/core/threads.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <new>
#include <stdexcept>

#include "core/check.h"
#include "curvature/fisher_state.h"
#include "model/node_timer.h"

#ifdef NATGRAD_HAVE_OPENMP
#include <omp.h>
#endif

namespace natgrad {

namespace {
int thread_id() {
#ifdef NATGRAD_HAVE_OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}
int team_size() {
#ifdef NATGRAD_HAVE_OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}
// Runs f on a team of n threads, and with n = 1 directly: libgomp allocates a new team for every parallel
// region of one thread, and a product allocates nothing (tests/test_allocation.cpp).
template <typename F>
void in_team(int n, F&& f) {
#ifdef NATGRAD_HAVE_OPENMP
  if (n > 1) {
#pragma omp parallel num_threads(n)
    f();
    return;
  }
#endif
  f();
}
}  // namespace

namespace detail {

std::string describe_failure(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const Interrupted& x) {
    return std::string("s") + x.what();
  } catch (const std::invalid_argument& x) {
    return std::string("i") + x.what();
  } catch (const std::bad_alloc&) {
    return "rout of memory";
  } catch (const std::exception& x) {
    return std::string("r") + x.what();
  } catch (...) {
    return "ran exception that is not a std::exception";
  }
}

void throw_agreed(const std::string& agreed, const std::exception_ptr& mine) {
  if (mine && describe_failure(mine) == agreed) std::rethrow_exception(mine);
  const std::string message = agreed.substr(1);
  if (agreed[0] == 's') throw Interrupted(message);
  if (agreed[0] == 'i') throw std::invalid_argument(message);
  throw std::runtime_error(message);
}

}  // namespace detail

template <typename Scalar>
void FisherOperator<Scalar>::State::run_forward(std::exception_ptr failed) {
  // The forward pass, once per parameter vector; its activations serve every later product. Each chunk then
  // looks for the first layer (input included) where a NaN or Inf appears, while its activations are still
  // in cache; the earliest such layer over all chunks, and its first sample, are reported.
  forward_done = false;
  detail::PassHalt halt;
  halt.error = failed;
  std::string nan_report;
  if (!failed) {
    try {
      const Index cs = plan.chunk_size;
      const std::size_t none = cache.acts.size();
      timers.clear_forward();
      std::vector<std::pair<std::size_t, Index>> first_bad(static_cast<std::size_t>(plan.num_chunks),
                                                           {none, 0});
      const bool report = static_cast<bool>(options.on_progress);
#ifdef NATGRAD_HAVE_OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads)
#endif
      for (Index k = 0; k < plan.num_chunks; ++k) {
        if (halted(halt)) continue;
        const Index c0 = k * cs, n = std::min(cs, num_samples - c0);
        model.forward(theta.data(), cache, c0, n, timers.forward(thread_id()));
        const Index done = ++halt.chunks_done;
        if (report && thread_id() == 0)
          halt.guard([&] { options.on_progress("forward", done, plan.num_chunks); });
        for (std::size_t l = 0; l < cache.acts.size(); ++l) {
          const auto block = cache.acts[l].middleCols(c0, n);
          // x·0 is 0 for every finite x and NaN otherwise: one vectorized pass, no per-element branch.
          if (!std::isnan((block.array() * Scalar(0)).sum())) continue;
          Index j = 0;
          while (!std::isnan((block.col(j).array() * Scalar(0)).sum())) ++j;
          first_bad[static_cast<std::size_t>(k)] = {l, c0 + j};
          break;
        }
      }
      const auto bad = std::min_element(first_bad.begin(), first_bad.end(), [](const auto& a, const auto& b) {
        return a.first < b.first;  // the first chunk among those with the earliest layer: its first sample
      });
      if (bad != first_bad.end() && bad->first != none) {
        const std::size_t l = bad->first;
        nan_report = (l == 0 ? std::string("the input")
                             : "the output of layer " + model.node_id(l - 1) + " (" +
                                   model.layer(l - 1).name() + ")") +
                     " is NaN or Inf, first at sample " + std::to_string(options.first_sample + bad->second);
      }
      if (!halt.halted) {
        const Mat<Scalar>& Z = cache.acts.back();
        curvature = OutputCurvature<Scalar>(likelihood, options.kind, options.mc_samples, options.seed,
                                            ConstMatMap<Scalar>(Z.data(), Z.rows(), Z.cols()), data,
                                            positions, FisherOperator<Scalar>::keeps_probabilities(Z.size()),
                                            options.first_sample);
      }
    } catch (...) {
      halt.error = std::current_exception();
    }
    if (halt.error) halt.halted = true;
  } else {
    halt.halted = true;
  }
  // One process: rethrow or stop. Several: every rank takes part (a failed setup included), so that a rank
  // that failed or stopped does not leave the others waiting in the agreements below.
  end_pass(halt, "forward pass", plan.num_chunks, distributed());
  forward_error = distributed() ? comm->first_error(nan_report) : nan_report;  // every rank reports the first
  forward_done = true;
}

template <typename Scalar>
void FisherOperator<Scalar>::State::end_pass(detail::PassHalt& h, const char* pass, Index total,
                                             bool agree) const {
  std::string mine;
  if (h.error)
    mine = detail::describe_failure(h.error);
  else if (h.halted)
    mine = "sthe " + std::string(pass) + " was interrupted after " + std::to_string(h.chunks_done.load()) +
           " of " + std::to_string(total) + " chunks";
  if (agree) {
    // A max over the ranks first (one number), the message only when some rank has one.
    if (comm->max(mine.empty() ? 0.0 : 1.0) == 0.0) return;
    mine = comm->first_error(mine);
  }
  if (!mine.empty()) detail::throw_agreed(mine, h.error);
}

template <typename Scalar>
void FisherOperator<Scalar>::State::backprop_chunks(const char* pass, bool report, Head head,
                                                    const Scalar* tangent) {
  const Index cs = plan.chunk_size, C = model.output_size();
  std::fill(work.begin(), work.end(), 0.0);
  detail::PassHalt halt;
  report = report && static_cast<bool>(options.on_progress);
  const bool poll = pass != nullptr && stop_set;
  in_team(num_threads, [&] {
    const int t = thread_id(), team = team_size();
    NATGRAD_CHECK(t < num_threads && team <= num_threads);  // one workspace per thread of the team
    Workspace<Scalar>& ws = workspaces[static_cast<std::size_t>(t)];
    Mat<Scalar>& obuf = out_buffers[static_cast<std::size_t>(t)];
    // The weights every chunk's GEMMs read, packed once for the pass (the pieces shared round-robin) instead
    // of once per chunk: the R-op's dW from the tangent on every pass, W and Wᵀ from θ on the first pass
    // after θ was set (weights_packed). Packing counts as the node's R-op time, and so as part of the head
    // (the profile's curvature time is the head's less the R-op's).
    {
      const detail::NodeTimer timer(timers.head(t), 0);
      for (Index i = t; i < packed.pieces(); i += team)
        model.pack_weights(weights_packed ? nullptr : theta.data(), tangent, i, packed, timers.rop(t));
    }
#ifdef NATGRAD_HAVE_OPENMP
#pragma omp barrier
#endif
    Index k0, k1;
    plan.chunk_range(t, team, k0, k1);
    for (Index k = k0; k < k1; ++k) {
      if ((poll || report) && halted(halt)) break;
      const Index c0 = k * cs, n = std::min(cs, num_samples - c0);
      MatMap<Scalar> w(obuf.data(), C, n);
      {
        const detail::NodeTimer timer(timers.head(t), 0);  // the whole head; its R-op part is also per node
        ws.time_nodes(timers.rop(t));
        head(k, c0, n, w, ws);
      }
      ws.time_nodes(timers.backprop(t));
      model.backprop_cotangents(theta.data(), cache, c0, n, ConstMatMap<Scalar>(w.data(), C, n), cot, ws,
                                &packed);
      ws.time_nodes(nullptr);
      work[static_cast<std::size_t>(t)] += plan.chunk_macs_per_sample * double(n);
      const Index done = ++halt.chunks_done;
      if (report && t == 0) halt.guard([&] { options.on_progress(pass, done, plan.num_chunks); });
    }
  });
  weights_packed = true;  // every thread packed its pieces before the barrier
  // Only a pass with a callback can stop: it agrees (under a communicator) before the sum over the ranks.
  if (poll || report) end_pass(halt, pass, plan.num_chunks, distributed());
}

template <typename Scalar>
void FisherOperator<Scalar>::State::sum_gradients(Scalar* y) {
  const Index cs = plan.chunk_size;
  in_team(num_threads, [&] {
    const int t = thread_id(), team = team_size();
    Workspace<Scalar>& ws = workspaces[static_cast<std::size_t>(t)];
    // B: the parameter tasks (a thread beyond the planned count would take over none).
    for (int a = t; a < num_threads; a += team)
      for (int i : assignment[static_cast<std::size_t>(a)]) {
        const detail::FisherPlan::Task& task = plan.tasks[static_cast<std::size_t>(i)];
        const detail::NodeTimer timer(timers.gradient(t), task.layer);
        if (task.by_blocks) {
          model.gradient_block(task.layer, cache, cot, task.row0, task.rows, task.col0, task.cols, y,
                               task_scratch[static_cast<std::size_t>(t)].data());
        } else {
          const Index P = model.layer(task.layer).num_params();
          Scalar* partial = partials.data() + plan.partial_offset[task.layer] + task.group * P;
          std::fill(partial, partial + P, Scalar(0));
          model.gradient_of_samples(task.layer, theta.data(), cache, cot, task.chunk0 * cs,
                                    std::min(num_samples, task.chunk1 * cs), cs, partial, ws);
        }
        work[static_cast<std::size_t>(t)] += task.macs;
      }
#ifdef NATGRAD_HAVE_OPENMP
#pragma omp barrier
#endif
    // C: each group-split node's partial gradients summed in group order (a tied node's go with its owner's),
    // in blocks of entries shared round-robin.
    const detail::NodeTimer timer(timers.reduction(t), 0);
    constexpr Index block = 4096;
    Index item = 0;
    for (std::size_t l = 0; l < reduction_parts.size(); ++l) {
      const std::vector<const Scalar*>& parts = reduction_parts[l];
      if (parts.empty()) continue;
      const Index P = model.layer(l).num_params(), off = model.param_offset(l);
      for (Index i0 = 0; i0 < P; i0 += block, ++item) {
        if (item % team != t) continue;
        const Index n = std::min(block, P - i0);
        detail::sum_in_order(parts, i0, n, y + off + i0);
      }
    }
  });
  timers.count_run();
}

template <typename Scalar>
void FisherOperator<Scalar>::State::sum_over_samples(Scalar* y) {
  if (num_samples > 0)
    sum_gradients(y);
  else  // a rank without samples (its plan has no sample groups to write y): zeros into the sum
    std::fill(y, y + num_params, Scalar(0));
  if (distributed()) comm->sum(y, num_params);  // in rank order: the same y on every rank
}

template <typename Scalar>
void FisherOperator<Scalar>::State::scale_and_damp(Scalar* y, const detail::ScaleAndDamp<Scalar>& finish) {
  // Blocks of fixed bounds (not of the team's size), so that each entry takes the same path through Eigen's
  // vectorized and scalar code for any number of threads.
  constexpr Index block = 4096;
  in_team(num_threads, [&] {
    const int t = thread_id(), team = team_size();
    const detail::NodeTimer timer(timers.reduction(t), 0);  // (profiled with phase C's sums)
    Index item = 0;
    for (Index i0 = 0; i0 < num_params; i0 += block, ++item)
      if (item % team == t) finish(y, i0, std::min(block, num_params - i0));
  });
}

template <typename Scalar>
Vec<Scalar> FisherOperator<Scalar>::State::squared_gradients(const std::vector<bool>& nodes) {
  // Per node with parameters and sample group, the per-sample squared gradients into the group's own partial
  // sum (squared_partial_layout: at most plan.diagonal_partial_size scalars, this call's own), then the
  // groups summed in group order. What this allocates is detail::squared_gradients_bytes.
  const Index cs = plan.chunk_size;
  const detail::SampleGroups& groups = plan.diagonal_groups;
  std::fill(work.begin(), work.end(), 0.0);
  struct Item {
    std::size_t layer;
    Index group;
    Index offset;  // in `partial`
  };
  Index total = 0;
  const std::vector<Index> base = detail::squared_partial_layout(model, groups.groups, nodes, total);
  std::vector<Item> items;
  for (std::size_t l = 0; l < model.num_layers(); ++l)
    for (Index g = 0; base[l] >= 0 && g < groups.groups; ++g)
      items.push_back({l, g, base[l] + g * model.layer(l).num_params()});
  Vec<Scalar> partial = Vec<Scalar>::Zero(total);
#ifdef NATGRAD_HAVE_OPENMP
#pragma omp parallel num_threads(num_threads)
#endif
  {
    Workspace<Scalar>& ws = workspaces[static_cast<std::size_t>(thread_id())];
    // The squared gradients' scratch (a sequence layer's whole per-sample gradient), for this call only.
    typename Workspace<Scalar>::Buffer scratch(static_cast<std::size_t>(model.squared_scratch_size(cs)));
#ifdef NATGRAD_HAVE_OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
    for (std::size_t i = 0; i < items.size(); ++i) {
      const Item& it = items[i];
      model.squared_gradients(it.layer, theta.data(), cache, cot, groups.begin(it.group) * cs,
                              std::min(num_samples, groups.end(it.group) * cs), cs,
                              partial.data() + it.offset, ws, scratch.data());
    }
  }
  Vec<Scalar> diag = Vec<Scalar>::Zero(num_params);
  for (std::size_t l = 0; l < model.num_layers(); ++l) {
    if (base[l] < 0 || groups.groups == 0) continue;  // (no group: a rank without samples adds zeros)
    const Index P = model.layer(l).num_params();
    std::vector<const Scalar*> parts;
    for (Index g = 0; g < groups.groups; ++g) parts.push_back(partial.data() + base[l] + g * P);
    detail::sum_in_order(parts, 0, P, diag.data() + model.param_offset(l));
  }
  return diag;
}

#define NATGRAD_INSTANTIATE(S)                                                                         \
  template void FisherOperator<S>::State::run_forward(std::exception_ptr);                             \
  template void FisherOperator<S>::State::end_pass(detail::PassHalt&, const char*, Index, bool) const; \
  template void FisherOperator<S>::State::backprop_chunks(const char*, bool, Head, const S*);          \
  template void FisherOperator<S>::State::sum_gradients(S*);                                           \
  template void FisherOperator<S>::State::sum_over_samples(S*);                                        \
  template void FisherOperator<S>::State::scale_and_damp(S*, const detail::ScaleAndDamp<S>&);          \
  template Vec<S> FisherOperator<S>::State::squared_gradients(const std::vector<bool>&);
NATGRAD_INSTANTIATE(float)
NATGRAD_INSTANTIATE(double)
#undef NATGRAD_INSTANTIATE

}  // namespace natgrad
