#include <natgrad/distributed/communicator.h>

namespace natgrad {

const Communicator& serial_communicator() {
  static const SerialCommunicator serial;
  return serial;
}

}  // namespace natgrad
