// Errors raised inside kernels. Kernels throw bitnet::Error (or let Ort::Exception escape); the
// registration wrapper (bitnet/lite_op.h) turns every exception into an OrtStatus, so nothing is
// thrown across the C boundary. Messages start with "[Op] " and say what is wrong and how to fix it.
#pragma once

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace bitnet {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Concatenates the arguments with operator<< into "[op] ..." and throws bitnet::Error.
template <typename... Args>
[[noreturn]] void Fail(const char* op, const Args&... args) {
  std::ostringstream message;
  message << '[' << op << "] ";
  (message << ... << args);
  throw Error(message.str());
}

// "[2, 3, 4]" for error messages.
inline std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    out += (i ? ", " : "") + std::to_string(shape[i]);
  }
  return out + "]";
}

}  // namespace bitnet
