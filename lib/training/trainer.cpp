// The training loop (trainer.h): epochs of minibatches, evaluations, the log and the stop rules.
#include <natgrad/training/minibatches.h>
#include <natgrad/training/trainer.h>

#include <chrono>
#include <cmath>
#include <tuple>

#include "core/fail.h"
#include "training/batch_share.h"

namespace natgrad {

template <typename Scalar>
std::pair<double, double> evaluate(const Network<Scalar>& model, LikelihoodKind likelihood, const Vec<Scalar>& theta,
                                   const Dataset<Scalar>& data, const Communicator* communicator) {
  FisherOptions fo;
  fo.kind = FisherKind::empirical;
  fo.communicator = communicator;
  const detail::BatchShare<Scalar> mine(data, data.size(), fo);  // (its loss: summed over the ranks)
  const FisherOperator<Scalar> F(model, theta, likelihood, mine.data(), mine.options());
  const double loss = F.forward_error().empty() ? F.loss() : std::nan("");
  double accuracy = std::nan("");
  if (likelihood == LikelihoodKind::categorical) {
    const Mat<Scalar>& Z = F.outputs();
    const Index T = model.output_positions(), C = Z.rows() / T;
    double counts[2] = {0, 0};  // right, counted
    for (Index n = 0; n < Z.cols(); ++n)
      for (Index t = 0; t < T; ++t) {
        const int64_t y = mine.data().labels[static_cast<std::size_t>(n * T + t)];
        if (y == kIgnoreIndex) continue;
        Index best = 0;
        Z.col(n).segment(t * C, C).maxCoeff(&best);  // the first maximum, as torch.argmax
        counts[0] += best == y ? 1 : 0;
        counts[1] += 1;
      }
    if (communicator && communicator->size() > 1) communicator->sum(counts, 2);  // (integers: exact)
    accuracy = counts[1] > 0 ? counts[0] / counts[1] : std::nan("");
  }
  return {loss, accuracy};
}

template <typename Scalar>
TrainSummary train(const Network<Scalar>& model, LikelihoodKind likelihood, Vec<Scalar>& theta,
                   const Dataset<Scalar>& data, const Dataset<Scalar>* test, Optimizer<Scalar>& optimizer,
                   const TrainOptions& o) {
  using Clock = std::chrono::steady_clock;
  if (o.epochs < 1) detail::fail("epochs must be >= 1, got " + std::to_string(o.epochs));
  if (o.eval_every < 0) detail::fail("eval_every must be >= 0, got " + std::to_string(o.eval_every));
  const Index N = data.size();
  if (N == 0) detail::fail("the training data is empty");
  const bool distributed = o.communicator && o.communicator->size() > 1;
  const Index per_epoch = batches_per_epoch(N, o.batch);
  const TrainProgress& from = o.start;
  const Index from_k = from.steps - from.epochs * per_epoch;  // the minibatch of its epoch the start is at
  if (from.epochs < 0 || from.epochs >= o.epochs || from_k < 0 || from_k >= per_epoch || from.epoch_samples < 0 ||
      Index(from.per_epoch.size()) != from.epochs)
    detail::fail("the start (" + std::to_string(from.steps) + " steps, " + std::to_string(from.epochs) +
                 " epochs completed) does not fit a run of " + std::to_string(o.epochs) + " epochs of " +
                 std::to_string(per_epoch) + " steps");
  TrainSummary s;
  s.steps = from.steps;
  s.epochs = from.epochs;
  s.per_epoch = from.per_epoch;
  double trained = from.time_s;  // the run's training time; this call's is trained − from.time_s
  auto record = [&](TrainRecord r) {
    if (o.on_record) o.on_record(r);
    s.records.push_back(std::move(r));
  };
  auto announce = [&](TrainPhase phase, Index step) {
    if (o.on_begin) o.on_begin(phase, step);
  };
  auto evaluation = [&](Index epoch, double train_loss) {
    announce(TrainPhase::evaluation, s.steps);
    TrainRecord r;
    r.eval = true;
    r.step = s.steps;
    r.epoch = epoch;
    r.time_s = trained;
    r.train_loss = train_loss;
    if (test) std::tie(r.test_loss, r.test_accuracy) = evaluate(model, likelihood, theta, *test, o.communicator);
    s.test_loss = r.test_loss;
    s.test_accuracy = r.test_accuracy;
    record(r);
  };
  auto progress = [&](double loss_sum, Index seen, double cg_sum, Index steps, double damping) {
    TrainProgress p;
    p.steps = s.steps;
    p.epochs = s.epochs;
    p.time_s = trained;
    p.epoch_loss_sum = loss_sum;
    p.epoch_samples = seen;
    p.epoch_cg_sum = cg_sum;
    p.epoch_steps = steps;
    p.epoch_damping = damping;
    p.per_epoch = s.per_epoch;
    return p;
  };
  auto last_is_eval = [&] { return !s.records.empty() && s.records.back().eval; };
  double loss_sum = from.epoch_loss_sum, cg_sum = from.epoch_cg_sum, damping = from.epoch_damping;  // of the
  Index seen = from.epoch_samples, steps = from.epoch_steps;                                          // epoch in progress
  for (Index epoch = from.epochs; epoch < o.epochs && !s.stopped; ++epoch) {
    const std::vector<Index> order = epoch_order(N, o.seed, epoch, o.shuffle);
    for (Index k = epoch == from.epochs ? from_k : 0; k < per_epoch; ++k) {
      bool stop = (o.stop_requested && o.stop_requested()) || (o.max_time_s > 0 && trained - from.time_s >= o.max_time_s);
      if (distributed) stop = o.communicator->broadcast(stop);  // rank 0's clock and signals decide
      if (stop) {
        s.stopped = true;
        break;
      }
      announce(TrainPhase::step, s.steps + 1);
      const Index first = k * o.batch, count = std::min(o.batch, N - first);
      const Dataset<Scalar> batch = gather(data, order, first, count);
      const auto t0 = Clock::now();
      TrainRecord r;
      r.result = optimizer.step(model, likelihood, theta, batch, s.steps);
      trained += std::chrono::duration<double>(Clock::now() - t0).count();
      ++s.steps;
      r.step = s.steps;
      r.epoch = epoch + 1;
      r.time_s = trained;
      loss_sum += r.result.loss * double(count);
      seen += count;
      cg_sum += double(r.result.cg_iterations);
      damping = r.result.damping_after;
      ++steps;
      record(r);
      if (o.eval_every > 0 && s.steps % o.eval_every == 0) evaluation(epoch + (k + 1 == per_epoch ? 1 : 0), std::nan(""));
    }
    if (s.stopped) break;
    s.epochs = epoch + 1;
    const double train_loss = loss_sum / double(seen);
    if (o.eval_every == 0 || (epoch + 1 == o.epochs && !last_is_eval())) evaluation(epoch + 1, train_loss);
    EpochSummary e;
    e.epoch = epoch + 1;
    e.train_loss = train_loss;
    e.test_loss = s.test_loss;
    e.test_accuracy = s.test_accuracy;
    e.time_s = trained;
    e.damping = damping;
    e.cg_iterations = cg_sum / double(steps);
    s.per_epoch.push_back(e);
    loss_sum = cg_sum = damping = 0;
    seen = steps = 0;
    if (o.on_epoch_end) {
      announce(TrainPhase::checkpoint, s.steps);
      o.on_epoch_end(progress(0, 0, 0, 0, 0));
    }
  }
  if (s.stopped && !last_is_eval()) evaluation(s.epochs, std::nan(""));
  s.time_s = trained;
  s.progress = progress(loss_sum, seen, cg_sum, steps, damping);
  return s;
}

template std::pair<double, double> evaluate<float>(const Network<float>&, LikelihoodKind, const Vec<float>&,
                                                   const Dataset<float>&, const Communicator*);
template std::pair<double, double> evaluate<double>(const Network<double>&, LikelihoodKind, const Vec<double>&,
                                                    const Dataset<double>&, const Communicator*);
template TrainSummary train<float>(const Network<float>&, LikelihoodKind, Vec<float>&, const Dataset<float>&,
                                   const Dataset<float>*, Optimizer<float>&, const TrainOptions&);
template TrainSummary train<double>(const Network<double>&, LikelihoodKind, Vec<double>&, const Dataset<double>&,
                                    const Dataset<double>*, Optimizer<double>&, const TrainOptions&);

}  // namespace natgrad
