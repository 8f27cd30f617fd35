// natgrad train's status on stderr: on a terminal one line rewritten in place ("\r" text "\033[K") and ended at
// each epoch's end, before each evaluation's line on stdout and at the end; elsewhere (a pipe, a file) a plain
// "[  12.34s] …" line per update that tells something new. An update at least every interval (2 s) even while
// one step runs longer: a ticker thread then shows the last status with what has been running since ("…, step
// 13 running 4.2 s"). Nothing with --quiet (every rank but 0 is quiet).
#pragma once

#include "progress.h"

#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>

namespace natgrad {
namespace cli {

/// The seconds between two updates of `natgrad train`'s status: kProgressInterval, or the environment's
/// NATGRAD_PROGRESS_INTERVAL (a knob for tests: seconds in [0.01, 3600]); usage_error on any other value.
double progress_interval();

/// The status line and its ticker. Thread-safe; the ticker is stopped and joined by finish() or the destructor
/// (an exception, a stop by a signal), so that nothing is printed after the command's summary.
class StatusLine {
 public:
  /// `interval`: progress_interval(). No thread and no output when `progress` is quiet.
  StatusLine(const Progress& progress, double interval);
  ~StatusLine();
  StatusLine(const StatusLine&) = delete;
  StatusLine& operator=(const StatusLine&) = delete;

  enum class Show {
    later,     ///< at the next update
    now,       ///< at once (a run's first step)
    now_ended  ///< at once, and the line ended (an epoch's last step)
  };
  /// The latest status (a step's: its loss, η, λ, time left).
  void update(std::string status, Show show);
  /// What runs from now on ("step 13", "evaluation"; "" nothing in particular): an update that finds no new
  /// status shows it with the seconds it has been running.
  void begin(std::string what);
  /// Runs `write` (a line on stdout) with the status line ended and the ticker held off.
  template <typename F>
  void aside(F write) {
    std::lock_guard<std::mutex> lock(mutex_);
    end_line();
    write();
  }
  /// Stops the ticker and ends the line; later calls do nothing.
  void finish();

 private:
  void tick();               // the ticker thread
  void print(bool running);  // under mutex_: the status, with what is running (and since when) if `running`
  void end_line();           // under mutex_ (whether a line is open: signals.h, whose handler may end it)

  const Progress& progress_;
  const clock_type::duration interval_;
  const bool quiet_, terminal_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::string status_, what_;
  std::string piped_;  // the text of the last line through a pipe (the stamp left out)
  clock_type::time_point since_, last_print_;
  bool fresh_ = false;  // status_ not printed yet
  bool stop_ = false;
  std::thread ticker_;
};

}  // namespace cli
}  // namespace natgrad
