// SPDX-License-Identifier: AGPL-3.0-or-later
// The firmware link's decoder (firmware/core, docs/firmware-link.md): bytes from the UART through
// FrameDecoder, each frame's header and body through decode_header and the body reader of its
// type, as the board and the agent's mcu driver read them; and the RDM6300 badge parser on the same
// bytes.
//
// Input: the bytes on the line. Checks, besides the sanitizers: a frame the decoder accepts fits
// k_max_payload_bytes and encodes back to a frame that decodes to the same payload; a body that
// decodes encodes back to the same known fields.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "reflow/fw/inputs.hpp"
#include "reflow/fw/link.hpp"
#include "reflow/fw/messages.hpp"

using namespace reflow::fw;

namespace {

void check(bool ok) {
  if (!ok) std::abort();
}

bool same(std::span<const std::uint8_t> a, std::span<const std::uint8_t> b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (a[i] != b[i]) return false;
  }
  return true;
}

// Decodes a body of type Body and, when it decodes, checks that encoding it back gives the same
// bytes for the fields it knows.
template <typename Body>
void body_round_trip(const Header& header, std::span<const std::uint8_t> body) {
  Body value{};
  if (!decode(body, value)) return;
  PayloadBuffer again{};
  const std::size_t n = encode(header, value, again);
  const std::size_t known = n - k_header_bytes;
  check(body.size() >= known);
  check(same(std::span(again).subspan(k_header_bytes, known), body.first(known)));
}

void read_message(std::span<const std::uint8_t> payload) {
  Header header;
  if (!decode_header(payload, header)) return;
  const auto body = body_of(payload);
  switch (header.type) {
    case MessageType::hello:
      body_round_trip<Hello>(header, body);
      break;
    case MessageType::config: {
      body_round_trip<Config>(header, body);
      Config c;
      if (decode(body, c)) (void)check_config(c);
      break;
    }
    case MessageType::session_start:
      body_round_trip<SessionStart>(header, body);
      break;
    case MessageType::session_end:
      body_round_trip<SessionEnd>(header, body);
      break;
    case MessageType::pulses:
      body_round_trip<Pulses>(header, body);
      break;
    case MessageType::badge:
      body_round_trip<Badge>(header, body);
      break;
    case MessageType::heartbeat:
      body_round_trip<Heartbeat>(header, body);
      break;
    case MessageType::error:
      body_round_trip<Error>(header, body);
      break;
    case MessageType::ack:
      body_round_trip<Ack>(header, body);
      break;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FrameDecoder decoder;
  Em4100Parser badge;
  std::uint32_t frames = 0;
  for (std::size_t i = 0; i < size; ++i) {
    (void)badge.feed(data[i]);
    if (!decoder.feed(data[i])) continue;
    ++frames;
    const auto payload = decoder.payload();
    check(!payload.empty() && payload.size() <= k_max_payload_bytes);
    std::array<std::uint8_t, k_max_frame_bytes> line{};
    const std::size_t n = encode_frame(payload, line);
    check(n > 0);
    FrameDecoder again;
    bool got = false;
    for (std::size_t k = 0; k < n; ++k)
      got = again.feed(line[k]);
    check(got && same(again.payload(), payload));
    read_message(payload);
  }
  check(decoder.frames() == frames);
  return 0;
}
