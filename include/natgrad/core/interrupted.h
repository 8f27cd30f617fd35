/// \file interrupted.h
/// \brief How a long computation that was asked to stop leaves: the Interrupted exception.
///
/// Long passes (the forward pass, the gradient, a Fisher-vector product, a spectrum) poll a stop request
/// (FisherOptions::stop_requested) between chunks of work. When it returns true the pass finishes no
/// further chunk and throws Interrupted; whatever the caller had completed before it (a CG iterate, the
/// eigenvalues found so far) is still valid. Under MPI the ranks agree on the stop before they throw, so no
/// rank is left waiting in a collective call.
///
/// \code
/// try {
///   natgrad::FisherOperator<float> F(model, theta, likelihood, data, options);
/// } catch (const natgrad::Interrupted& e) {
///   // nothing was computed; say so and exit 130
/// }
/// \endcode
#pragma once

#include <stdexcept>
#include <string>

namespace natgrad {

/// Thrown when a computation stops because a stop was requested (a signal, a callback), not because of an
/// error. what() says which pass stopped ("the forward pass was interrupted after 12 of 40 chunks").
class Interrupted : public std::runtime_error {
 public:
  explicit Interrupted(const std::string& what) : std::runtime_error(what) {}
};

}  // namespace natgrad
