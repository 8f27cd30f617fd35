// natgrad-bench --model M.json [--weights W.safetensors] [--data D] [--batch B]: the benchmarks of the user's
// own model.
#pragma once

namespace natgrad {
namespace bench {

/// Reads --model, --weights, --data and --batch (also as --name=value) from the arguments Google Benchmark
/// left in argv. With --model it registers, for that model and its likelihood, model/gradient,
/// model/fvp_exact, model/fvp_mc, model/fvp_empirical and model/cg10 (GFLOP/s, products and CG counters), on
/// B samples (default 128) of --data or, without it, of random inputs and targets drawn from fixed seeds; the
/// parameters come from --weights or PyTorch's default initialization (seed 0). Returns whether it did.
/// Throws std::invalid_argument for an unknown argument, a missing value or a file the readers refuse.
bool register_user_model(int argc, char** argv);

}  // namespace bench
}  // namespace natgrad
