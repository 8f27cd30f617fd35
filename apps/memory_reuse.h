// Keeping freed memory in the process instead of returning it to the system (glibc's malloc).
#pragma once

namespace natgrad {
namespace cli {

/// The large buffers a training step or a solve allocates and frees (a K-FAC refresh's factors, each step's
/// forward pass and vectors of the parameters' size) come back from the heap already mapped. With glibc's
/// defaults, blocks above 128 KiB (a threshold that adapts) are mapped afresh and every page faults on first
/// touch, and a heap top above twice that is returned to the system; on a virtual machine a fault costs
/// microseconds: the classifier's K-FAC inverses took 52 ms a refresh that way against 9.4 ms reused.
/// Blocks up to 32 MiB (glibc's largest threshold) come from the heap, and the heap keeps up to 1 GiB freed.
/// Returns whether the allocator took both settings (false without glibc, or under a sanitizer's allocator).
bool keep_freed_memory();

}  // namespace cli
}  // namespace natgrad
