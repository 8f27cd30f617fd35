// SIGINT and SIGTERM: the first asks the command to stop at its next chunk of work (and, unless --quiet,
// says so on stderr); a second ends the process at once with 128 + the signal (130 for SIGINT, 143 for
// SIGTERM). The command then writes what it had completed, says what it skipped, and exits with that status.
#pragma once

#include <csignal>

namespace natgrad {
namespace cli {

/// The first signal received (SIGINT or SIGTERM), or 0.
extern volatile std::sig_atomic_t g_signal;

/// Installs the handlers; `announce`: write one line on stderr when the first signal arrives.
void install_signal_handlers(bool announce);

/// Whether a line without its newline is on stderr (a status line rewritten in place): the announcement of a
/// signal then starts on a line of its own (and the line counts as ended).
void set_stderr_line_open(bool open);
bool stderr_line_open();

/// Whether a stop was asked (a signal arrived).
inline bool stop_asked() { return g_signal != 0; }

/// "SIGINT" or "SIGTERM" for the signal received (`fallback` when none was, as on an MPI rank that did not see
/// rank 0's).
const char* signal_name(int fallback = SIGTERM);

/// The exit status of a command stopped by the signal received (128 + signal; `fallback` when none was).
int interrupted_status(int fallback = SIGTERM);

}  // namespace cli
}  // namespace natgrad
