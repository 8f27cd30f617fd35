// What the command line refuses, warns about and prints before it computes.
#include "cli_fixture.h"

#include <natgrad/io/parameters_io.h>

#include <Eigen/Eigenvalues>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iterator>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

using namespace natgrad;
using namespace natgrad::test;
using namespace natgrad::test::cli_fixture;

namespace {

int lines(const std::string& s) { return static_cast<int>(std::count(s.begin(), s.end(), '\n')); }

}  // namespace

// fvp, spectrum and profile do not offer solve's options, and name whose they are when given.
TEST_F(Cli, EachCommandListsOnlyItsOwnOptions) {
  for (const std::string cmd : {"fvp", "spectrum", "profile"}) {
    const Result h = run(cmd + " --help");
    ASSERT_EQ(h.code, 0) << cmd;
    for (const char* o : {"--cg-tol", "--cg-max-iters", "--preconditioner", "--save-gradient", "--deflate", "--compare"})
      EXPECT_EQ(h.out.find(o), std::string::npos) << cmd << " --help lists " << o;
    EXPECT_EQ(h.out.find("--curvature-batch") != std::string::npos, cmd == "spectrum") << cmd;
    EXPECT_EQ(h.out.find("multi-shift"), std::string::npos) << cmd << ": a list of dampings is solve's";
  }
  const std::string fvp = "fvp " + base + " --vector " + p("v.safetensors") + " --output " + p("fv_never.safetensors");
  for (const auto& [args, expect] : std::vector<std::pair<std::string, std::string>>{
           {fvp + " --cg-tol 1e-3", "--cg-tol is not an option of `natgrad fvp` (it is one of `natgrad solve`)"},
           {fvp + " --curvature-batch 5", "--curvature-batch is not an option of `natgrad fvp`"},
           {"spectrum " + base + " --cg-max-iters 3", "--cg-max-iters is not an option of `natgrad spectrum`"},
           {"spectrum " + base + " --preconditioner=diagonal", "--preconditioner is not an option of `natgrad spectrum`"},
           {"profile " + base + " --curvature-batch 4", "--curvature-batch is not an option of `natgrad profile`"}}) {
    const Result r = run(args);
    EXPECT_EQ(r.code, 2) << args;
    EXPECT_NE(r.err.find(expect), std::string::npos) << r.err;
    EXPECT_EQ(lines(r.err), 1) << r.err;
  }
  EXPECT_FALSE(exists(p("fv_never.safetensors")));
  // The eigenvector file as it is: one [K, ...shape] tensor per parameter, row 0 the largest.
  const Result s = run("spectrum --help");
  EXPECT_NE(s.out.find("one [K, ...shape] tensor per parameter"), std::string::npos) << s.out;
  EXPECT_NE(s.out.find("row 0 the largest eigenvalue's"), std::string::npos) << s.out;
  // --preconditioner says what it is and where the measurements are, not the measurements.
  const Result solve = run("solve --help");
  const std::size_t at = solve.out.find("--preconditioner");
  ASSERT_NE(at, std::string::npos);
  const std::string text = solve.out.substr(at, solve.out.find("\n  --", at + 1) - at);
  EXPECT_NE(text.find("docs/solvers.md"), std::string::npos) << text;
  EXPECT_FALSE(std::regex_search(text, std::regex("[0-9]+ products|1e-[0-9]"))) << text;  // no measurements
  EXPECT_LT(text.size(), 400u) << text;
}
