// SPDX-License-Identifier: AGPL-3.0-or-later
// A fixed workload for profiling the node's per-event CPU: N pre-signed envelopes (the events of
// reflow-ingest-bench) verified and stored in a real SQLite store, in batches of 512 as the
// service does. Not a test: run it under callgrind and count instructions of verify_and_store,
//   valgrind --tool=callgrind --toggle-collect='*verify_and_store*'
//     build/bin/verify_workload 2000
// and divide the Ir by N. Instruction counts do not depend on the machine's load.
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <reflow/core/event.hpp>
#include <reflow/core/jose.hpp>
#include <reflow/core/ulid.hpp>
#include <reflow/core/units.hpp>
#include <reflow/node/store.hpp>
#include <reflow/node/verifier.hpp>

#include <reflow/node/key_lookup.hpp>
#include "temp_dir.hpp"

namespace {

constexpr std::int64_t k_t0 = 1'767'225'600'000;  // 2026-01-01T00:00:00Z
constexpr std::size_t k_devices = 20;
constexpr std::size_t k_batch = 512;

struct Envelope {
  std::string topic;
  std::string device;
  std::string bytes;
};

// The fields of reflow-ingest-bench's EventMaker.
nlohmann::ordered_json fields(std::int64_t job) {
  nlohmann::ordered_json f;
  f["action"] = "consume";
  f["resourceInventoriedAs"] = "spool:pla-galaxy-black-01";
  f["resourceQuantity"] = {{"hasNumericalValue", 14.2}, {"hasUnit", "gram"}};
  f["hasPointInTime"] = agent::format_rfc3339_ms(k_t0);
  f["inputOf"] = fmt::format("sim:printer:job-{}", job);
  f["meta"] = {{"job", job}, {"file", "benchy.gcode"}, {"method", "simulated"}};
  return f;
}

std::vector<Envelope> make_envelopes(const reflow_test::TempDir& dir, ingest::Store& store,
                                     std::size_t count) {
  agent::UlidGenerator ulids;
  const agent::EventSource source{"sim", "printer", ""};
  std::vector<Envelope> out(count);
  for (std::size_t d = 0; d < k_devices; ++d) {
    const std::string device = fmt::format("bench-{:04}", d);
    auto key = agent::DeviceKey::generate(dir / (device + ".key"));
    if (!key || !store.add_device(device, key->public_jwk(), k_t0)) std::abort();
    const std::string header = agent::jws_protected_header_b64(key->public_jwk().kid);
    const std::string stream = ulids.next(k_t0);
    std::string prev;
    // Device d sends events d, d + k_devices, …: interleaved as the bench publishes them.
    std::int64_t seq = 1;
    for (std::size_t i = d; i < count; i += k_devices, ++seq) {
      agent::EventStamp stamp{ulids.next(k_t0),        device, stream, seq, prev, k_t0 + seq,
                              agent::ClockSync::synced};
      const std::string payload =
          agent::make_event_payload(stamp, fields(static_cast<std::int64_t>(i)), source);
      const agent::Jws jws = agent::jws_sign(*key, header, payload);
      prev = agent::sha256_b64url(jws.signing_input());
      out[i] = Envelope{fmt::format("reflow/v1/{}/events", device), device, jws.to_envelope()};
    }
  }
  return out;
}

// What the service does per batch: verify each envelope (keys cached for the batch), then one
// put. Returns the number stored.
[[gnu::noinline]] std::size_t verify_and_store(ingest::Store& store,
                                               const std::vector<Envelope>& envelopes) {
  std::size_t stored = 0;
  for (std::size_t first = 0; first < envelopes.size(); first += k_batch) {
    std::map<std::string, std::optional<ingest::DeviceKeyRecord>, std::less<>> keys;
    const ingest::KeyLookup find_key =
        [&](std::string_view kid) -> ingest::Result<std::optional<ingest::DeviceKeyRecord>> {
      if (auto it = keys.find(kid); it != keys.end()) return it->second;
      auto found = store.find_key(kid);
      if (found) keys.emplace(std::string(kid), *found);
      return found;
    };
    std::vector<ingest::Incoming> batch;
    for (std::size_t i = first; i < std::min(envelopes.size(), first + k_batch); ++i) {
      const Envelope& e = envelopes[i];
      auto outcome = ingest::verify_envelope_with(find_key, e.topic, e.device, e.bytes);
      if (!outcome) std::abort();
      ingest::Incoming item;
      if (outcome->has_value())
        item.event = std::move(outcome->value());
      else
        item.rejection = std::move(outcome->error());
      batch.push_back(std::move(item));
    }
    auto results = store.put(batch, k_t0 + 10'000);
    if (!results) std::abort();
    for (const ingest::PutResult& r : *results)
      stored += r.outcome == ingest::PutOutcome::stored ? 1 : 0;
  }
  return stored;
}

}  // namespace

int main(int argc, char** argv) {
  const std::size_t count = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 2000;
  reflow_test::TempDir dir;
  auto store = ingest::open_sqlite_store(dir / "ingest.db");
  if (!store) {
    std::fprintf(stderr, "%s\n", store.error().message.c_str());
    return 2;
  }
  const std::vector<Envelope> envelopes = make_envelopes(dir, **store, count);
  const std::size_t stored = verify_and_store(**store, envelopes);
  std::printf("%zu envelopes, %zu stored\n", count, stored);
  return stored == count ? 0 : 1;
}
