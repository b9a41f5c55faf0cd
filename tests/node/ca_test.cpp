// SPDX-License-Identifier: AGPL-3.0-or-later
// The node's certificate authority (agent/node/src/ca.cpp): what it issues, what it refuses, and
// a real Mosquitto over mutual TLS that accepts only its certificates.
#include <reflow/node/ca.hpp>

#include <reflow/core/tls.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <ctime>
#include <fstream>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <thread>

#include <gtest/gtest.h>
#include <mbedtls/oid.h>
#include <mbedtls/x509_crt.h>
#include <mqtt/async_client.h>
#include <nlohmann/json.hpp>

#include "csr.hpp"
#include "files.hpp"
#include "mosquitto.hpp"
#include "temp_dir.hpp"

namespace {

using namespace std::chrono_literals;
using agent::ErrorCode;
using ingest::CertRole;
using ingest::IssueOptions;

using reflow_test::file_mode;
using reflow_test::read_text;
using reflow_test::write_text;

// A parsed certificate for mbedTLS's own checks (chain, extensions).
struct ParsedCrt {
  mbedtls_x509_crt crt;
  explicit ParsedCrt(const std::string& pem) {
    mbedtls_x509_crt_init(&crt);
    EXPECT_EQ(mbedtls_x509_crt_parse(&crt, reinterpret_cast<const unsigned char*>(pem.c_str()),
                                     pem.size() + 1),
              0);
  }
  ~ParsedCrt() { mbedtls_x509_crt_free(&crt); }
};

class CaTest : public ::testing::Test {
 protected:
  std::filesystem::path ca_dir() const { return m_dir / "ca"; }

  void init_ca() {
    auto ca = ingest::ca_init(ca_dir(), {});
    ASSERT_TRUE(ca) << ca.error().message;
  }

  std::string csr_for(const std::string& key_name, const std::string& cn) {
    return reflow_test::make_csr(m_dir / key_name, cn);
  }

  IssueOptions device_options(bool replace = false) {
    IssueOptions options;
    options.role = CertRole::device;
    options.days = 30;
    options.replace = replace;
    return options;
  }

  reflow_test::TempDir m_dir;
};

TEST_F(CaTest, RefusesCsrWhoseSignatureDoesNotVerify) {
  // (tls_test checks parse_csr's refusal itself.)
  const std::string csr = reflow_test::with_broken_signature(csr_for("tls.key", "press-01"));
  init_ca();
  auto issued = ingest::ca_sign(ca_dir(), csr, device_options());
  ASSERT_FALSE(issued);
  EXPECT_EQ(issued.error().code, ErrorCode::crypto);
  EXPECT_NE(issued.error().message.find("does not verify"), std::string::npos)
      << issued.error().message;
  EXPECT_FALSE(std::filesystem::exists(ca_dir() / ingest::k_issued_file) &&
               !read_text(ca_dir() / ingest::k_issued_file).empty());
}

TEST_F(CaTest, CaInitMakesSelfSignedCaCertificate) {
  ingest::CaInitOptions options;
  options.common_name = "Fablab Nord CA";
  options.days = 100;
  options.now_unix = 1'800'000'000;
  auto ca = ingest::ca_init(ca_dir(), options);
  ASSERT_TRUE(ca) << ca.error().message;
  EXPECT_TRUE(ca->is_ca);
  EXPECT_EQ(ca->subject, "CN=Fablab Nord CA");
  EXPECT_EQ(ca->issuer, "CN=Fablab Nord CA");
  EXPECT_EQ(ca->not_after, 1'800'000'000 + 100 * 86400);
  EXPECT_EQ(file_mode(ca_dir() / "ca.key"), 0600u);
  EXPECT_EQ(file_mode(ca_dir()), 0700u);

  ParsedCrt crt(read_text(ca_dir() / "ca.crt"));
  EXPECT_EQ(crt.crt.ca_istrue, 1);
  EXPECT_EQ(crt.crt.max_pathlen, 1);  // mbedTLS stores pathlen + 1
  EXPECT_EQ(mbedtls_x509_crt_check_key_usage(
                &crt.crt, MBEDTLS_X509_KU_KEY_CERT_SIGN | MBEDTLS_X509_KU_CRL_SIGN),
            0);
}

TEST_F(CaTest, CaInitRefusesWhenCaExists) {
  init_ca();
  const std::string before = read_text(ca_dir() / "ca.crt");
  auto again = ingest::ca_init(ca_dir(), {});
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code, ErrorCode::rejected);
  EXPECT_NE(again.error().message.find("already exists"), std::string::npos);
  EXPECT_EQ(read_text(ca_dir() / "ca.crt"), before);
}

TEST_F(CaTest, SignedDeviceCertificateChainsToCaWithClientAuth) {
  init_ca();
  const std::string csr = csr_for("tls.key", "press-01");
  auto issued = ingest::ca_sign(ca_dir(), csr, device_options());
  ASSERT_TRUE(issued) << issued.error().message;
  EXPECT_EQ(issued->info.subject, "CN=press-01");
  EXPECT_EQ(issued->info.issuer, "CN=reflow node CA");
  EXPECT_FALSE(issued->info.is_ca);
  EXPECT_EQ(issued->info.serial.size(), 32u);
  EXPECT_EQ(issued->info.not_after - issued->info.not_before, 30 * 86400 + 3600);
  EXPECT_EQ(issued->info.public_key_sha256, agent::tls::parse_csr(csr)->public_key_sha256);

  ParsedCrt ca(read_text(ca_dir() / "ca.crt"));
  ParsedCrt crt(issued->pem);
  std::uint32_t flags = 0;
  EXPECT_EQ(mbedtls_x509_crt_verify(&crt.crt, &ca.crt, nullptr, nullptr, &flags, nullptr, nullptr),
            0)
      << "flags " << flags;
  EXPECT_EQ(mbedtls_x509_crt_check_extended_key_usage(&crt.crt, MBEDTLS_OID_CLIENT_AUTH,
                                                      MBEDTLS_OID_SIZE(MBEDTLS_OID_CLIENT_AUTH)),
            0);
  EXPECT_NE(mbedtls_x509_crt_check_extended_key_usage(&crt.crt, MBEDTLS_OID_SERVER_AUTH,
                                                      MBEDTLS_OID_SIZE(MBEDTLS_OID_SERVER_AUTH)),
            0);
  EXPECT_EQ(mbedtls_x509_crt_check_key_usage(&crt.crt, MBEDTLS_X509_KU_DIGITAL_SIGNATURE), 0);
  EXPECT_EQ(crt.crt.ca_istrue, 0);

  // The CA remembers who holds the name.
  auto record = nlohmann::json::parse(read_text(ca_dir() / "issued.jsonl"));
  EXPECT_EQ(record["cn"], "press-01");
  EXPECT_EQ(record["role"], "device");
  EXPECT_EQ(record["serial"], issued->info.serial);
  EXPECT_EQ(record["fingerprint"], issued->info.public_key_sha256);
  EXPECT_EQ(record["not_after"], issued->info.not_after);
}

TEST_F(CaTest, CertificateFromAnotherCaDoesNotChain) {
  init_ca();
  auto other = ingest::ca_init(m_dir / "other-ca", {});
  ASSERT_TRUE(other) << other.error().message;
  auto issued =
      ingest::ca_sign(m_dir / "other-ca", csr_for("tls.key", "press-01"), device_options());
  ASSERT_TRUE(issued) << issued.error().message;
  ParsedCrt ca(read_text(ca_dir() / "ca.crt"));
  ParsedCrt crt(issued->pem);
  std::uint32_t flags = 0;
  EXPECT_NE(mbedtls_x509_crt_verify(&crt.crt, &ca.crt, nullptr, nullptr, &flags, nullptr, nullptr),
            0);
  EXPECT_NE(flags & MBEDTLS_X509_BADCERT_NOT_TRUSTED, 0u);
}

TEST_F(CaTest, ServerCertificateCarriesSubjectAltNames) {
  init_ca();
  IssueOptions options;
  options.role = CertRole::server;
  options.days = 30;
  options.hosts = {"node.example.org", "127.0.0.1", "::1"};
  auto issued = ingest::ca_issue_with_key(ca_dir(), m_dir / "server.key", "", options);
  ASSERT_TRUE(issued) << issued.error().message;
  EXPECT_EQ(issued->info.common_name, "node.example.org");
  EXPECT_EQ(issued->info.dns_names, std::vector<std::string>{"node.example.org"});
  EXPECT_EQ(issued->info.ip_addresses, (std::vector<std::string>{"127.0.0.1", "::1"}));
  EXPECT_EQ(file_mode(m_dir / "server.key"), 0600u);

  ParsedCrt ca(read_text(ca_dir() / "ca.crt"));
  ParsedCrt crt(issued->pem);
  std::uint32_t flags = 0;
  // mbedTLS matches the expected name against the dNSName entries.
  EXPECT_EQ(mbedtls_x509_crt_verify(&crt.crt, &ca.crt, nullptr, "node.example.org", &flags, nullptr,
                                    nullptr),
            0)
      << "flags " << flags;
  EXPECT_NE(mbedtls_x509_crt_verify(&crt.crt, &ca.crt, nullptr, "other.example.org", &flags,
                                    nullptr, nullptr),
            0);
  EXPECT_EQ(mbedtls_x509_crt_check_extended_key_usage(&crt.crt, MBEDTLS_OID_SERVER_AUTH,
                                                      MBEDTLS_OID_SIZE(MBEDTLS_OID_SERVER_AUTH)),
            0);
}

TEST_F(CaTest, ServerCertificateRefusesBadHost) {
  init_ca();
  IssueOptions options;
  options.role = CertRole::server;
  options.hosts = {"node example"};
  auto issued = ingest::ca_issue_with_key(ca_dir(), m_dir / "server.key", "", options);
  ASSERT_FALSE(issued);
  EXPECT_NE(issued.error().message.find("neither an IP address nor a DNS name"), std::string::npos)
      << issued.error().message;
}

TEST_F(CaTest, SignRefusesCommonNameThatIsNotADeviceId) {
  init_ca();
  auto issued = ingest::ca_sign(ca_dir(), csr_for("tls.key", "Press_01"), device_options());
  ASSERT_FALSE(issued);
  EXPECT_EQ(issued.error().code, ErrorCode::rejected);
  EXPECT_NE(issued.error().message.find("not a valid device id"), std::string::npos);
}

TEST_F(CaTest, CertificateThatCannotBeDeliveredIsNotRecordedAsIssued) {
  init_ca();
  const std::string csr = csr_for("a.key", "press-01");
  int calls = 0;
  auto refused = ingest::ca_sign(
      ca_dir(), csr, device_options(), [&](const ingest::Issued& issued) -> agent::Status {
        ++calls;
        EXPECT_NE(issued.pem.find("BEGIN CERTIFICATE"), std::string::npos);
        return agent::fail(ErrorCode::io, "disk full");
      });
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().message, "disk full");
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(read_text(ca_dir() / ingest::k_issued_file), "");

  // Delivered: recorded once, after the delivery.
  auto issued = ingest::ca_sign(ca_dir(), csr, device_options(), [&](const ingest::Issued&) {
    EXPECT_EQ(read_text(ca_dir() / ingest::k_issued_file), "");
    return agent::Status{};
  });
  ASSERT_TRUE(issued) << issued.error().message;
  auto record = nlohmann::json::parse(read_text(ca_dir() / ingest::k_issued_file));
  EXPECT_EQ(record["serial"], issued->info.serial);
}

TEST_F(CaTest, SignRefusesAnotherKeyForTheSameDeviceUnlessReplaced) {
  init_ca();
  auto first = ingest::ca_sign(ca_dir(), csr_for("a.key", "press-01"), device_options());
  ASSERT_TRUE(first) << first.error().message;
  // Renewal with the same key is fine.
  auto renewed = ingest::ca_sign(ca_dir(), csr_for("a.key", "press-01"), device_options());
  ASSERT_TRUE(renewed) << renewed.error().message;
  EXPECT_NE(renewed->info.serial, first->info.serial);

  const std::string other_key_csr = csr_for("b.key", "press-01");
  auto refused = ingest::ca_sign(ca_dir(), other_key_csr, device_options());
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, ErrorCode::rejected);
  EXPECT_NE(refused.error().message.find("--replace"), std::string::npos)
      << refused.error().message;

  auto replaced = ingest::ca_sign(ca_dir(), other_key_csr, device_options(true));
  ASSERT_TRUE(replaced) << replaced.error().message;
  // From now on the new key holds the name, and the old one is the stranger.
  auto old_again = ingest::ca_sign(ca_dir(), csr_for("a.key", "press-01"), device_options());
  ASSERT_FALSE(old_again);
  EXPECT_EQ(old_again.error().code, ErrorCode::rejected);
}

TEST_F(CaTest, ClientIdentityMustNotBeADeviceId) {
  init_ca();
  IssueOptions options;
  options.role = CertRole::client;
  auto refused = ingest::ca_issue_with_key(ca_dir(), m_dir / "node.key", "ingest-node", options);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, ErrorCode::rejected);
  EXPECT_NE(refused.error().message.find("valid device id"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(m_dir / "node.key"));

  auto issued = ingest::ca_issue_with_key(ca_dir(), m_dir / "ingest.key", "ingest@node", options);
  ASSERT_TRUE(issued) << issued.error().message;
  EXPECT_EQ(issued->info.subject, "CN=ingest@node");
  ParsedCrt crt(issued->pem);
  EXPECT_EQ(mbedtls_x509_crt_check_extended_key_usage(&crt.crt, MBEDTLS_OID_CLIENT_AUTH,
                                                      MBEDTLS_OID_SIZE(MBEDTLS_OID_CLIENT_AUTH)),
            0);

  // A device CSR cannot take a service's name either: it is not a device id.
  auto as_device = ingest::ca_sign(ca_dir(), csr_for("x.key", "ingest@node"), device_options());
  ASSERT_FALSE(as_device);
  EXPECT_EQ(as_device.error().code, ErrorCode::rejected);
}

TEST_F(CaTest, OneNameHoldsOneRole) {
  init_ca();
  IssueOptions server;
  server.role = CertRole::server;
  server.hosts = {"broker"};
  ASSERT_TRUE(ingest::ca_issue_with_key(ca_dir(), m_dir / "server.key", "", server));
  auto device = ingest::ca_sign(ca_dir(), csr_for("d.key", "broker"), device_options(true));
  ASSERT_FALSE(device);
  EXPECT_EQ(device.error().code, ErrorCode::rejected);
  EXPECT_NE(device.error().message.find("server certificate"), std::string::npos)
      << device.error().message;
}

TEST_F(CaTest, SignWithoutCaSaysHowToCreateOne) {
  auto issued = ingest::ca_sign(ca_dir(), csr_for("tls.key", "press-01"), device_options());
  ASSERT_FALSE(issued);
  EXPECT_EQ(issued.error().code, ErrorCode::not_found);
  EXPECT_NE(issued.error().message.find("ca init"), std::string::npos);
}

TEST_F(CaTest, ReadsCertificateFile) {
  init_ca();
  auto info = agent::tls::read_certificate(ca_dir() / "ca.crt");
  ASSERT_TRUE(info) << info.error().message;
  EXPECT_EQ(info->common_name, "reflow node CA");
  EXPECT_GT(info->not_after, static_cast<std::int64_t>(std::time(nullptr)));
  auto missing = agent::tls::read_certificate(m_dir / "missing.crt");
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, ErrorCode::io);
}

// ---- A real Mosquitto with mutual TLS
// --------------------------------------------------------------

// Mosquitto with a TLS listener that requires a client certificate and takes its CN as the user
// name (PROTOCOL §2). reflow_test::MosquittoProcess writes a fixed plain config, hence this one.
class TlsBroker {
 public:
  TlsBroker(const std::filesystem::path& dir, const std::filesystem::path& ca,
            const std::filesystem::path& cert, const std::filesystem::path& key)
      : m_dir(dir), m_port(reflow_test::free_loopback_port()) {
    write_text(dir / "acl",
               "pattern write reflow/v1/%u/events\n"
               "pattern write reflow/v1/%u/status\n"
               "pattern read reflow/v1/%u/ack\n"
               "user ingest@node\n"
               "topic read reflow/v1/+/events\n");
    std::ostringstream conf;
    conf << "listener " << m_port << " 127.0.0.1\n"
         << "cafile " << ca.string() << "\n"
         << "certfile " << cert.string() << "\n"
         << "keyfile " << key.string() << "\n"
         << "require_certificate true\n"
         << "use_identity_as_username true\n"
         << "allow_anonymous false\n"
         << "acl_file " << (dir / "acl").string() << "\n"
         << "persistence false\n"
         << "log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n";
    // As root, Mosquitto would switch to the `mosquitto` user, which cannot read the 0600 key.
    if (::geteuid() == 0) conf << "user root\n";
    write_text(dir / "mosquitto.conf", conf.str());

    const std::string binary = reflow_test::mosquitto_binary();
    if (::access(binary.c_str(), X_OK) != 0) throw std::runtime_error(binary + " not found");
    m_pid = ::fork();
    if (m_pid == 0) {
      int log_fd = ::open((dir / "mosquitto.log").c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (log_fd >= 0) {
        ::dup2(log_fd, 1);
        ::dup2(log_fd, 2);
      }
      const std::string conf_path = (dir / "mosquitto.conf").string();
      ::execl(binary.c_str(), binary.c_str(), "-c", conf_path.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    for (int i = 0; i < 1000; ++i) {
      if (accepts_tcp()) return;
      int status = 0;
      if (::waitpid(m_pid, &status, WNOHANG) == m_pid) {
        m_pid = -1;
        throw std::runtime_error("mosquitto exited: " + read_text(dir / "mosquitto.log"));
      }
      std::this_thread::sleep_for(10ms);
    }
    throw std::runtime_error("mosquitto did not start: " + read_text(dir / "mosquitto.log"));
  }
  ~TlsBroker() {
    if (m_pid > 0) {
      ::kill(m_pid, SIGTERM);
      ::waitpid(m_pid, nullptr, 0);
    }
  }
  TlsBroker(const TlsBroker&) = delete;
  TlsBroker& operator=(const TlsBroker&) = delete;

  bool accepts_tcp() const {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(m_port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    ::close(fd);
    return ok;
  }

  std::string uri() const { return "ssl://127.0.0.1:" + std::to_string(m_port); }
  std::string log() const { return read_text(m_dir / "mosquitto.log"); }

 private:
  std::filesystem::path m_dir;
  int m_port;
  pid_t m_pid = -1;
};

// A Paho client with TLS; `cert` and `key` empty: no client certificate.
class TlsClient {
 public:
  TlsClient(const std::string& uri, const std::string& id)
      : m_client(uri, id, static_cast<mqtt::iclient_persistence*>(nullptr)) {
    m_client.set_message_callback([this](mqtt::const_message_ptr message) {
      std::lock_guard lock(m_mutex);
      m_topics.push_back(message->get_topic());
      m_changed.notify_all();
    });
  }
  ~TlsClient() {
    try {
      if (m_client.is_connected()) m_client.disconnect()->wait_for(2s);
    } catch (const std::exception&) {
    }
  }

  // Connects; returns "" or the error.
  std::string connect(const std::filesystem::path& ca, const std::filesystem::path& cert,
                      const std::filesystem::path& key) {
    mqtt::ssl_options ssl;
    ssl.set_trust_store(ca.string());
    if (!cert.empty()) ssl.set_key_store(cert.string());
    if (!key.empty()) ssl.set_private_key(key.string());
    ssl.set_enable_server_cert_auth(true);
    ssl.set_verify(true);  // the server certificate must name 127.0.0.1 (an IP SAN)
    mqtt::connect_options options;
    options.set_clean_session(true);
    options.set_connect_timeout(10);
    // One protocol version: by default Paho retries a refused connection with MQTT 3.1.
    options.set_mqtt_version(MQTTVERSION_3_1_1);
    options.set_ssl(std::move(ssl));
    try {
      m_client.connect(options)->wait();
      return "";
    } catch (const mqtt::exception& e) {
      return e.what();
    }
  }

  mqtt::async_client& client() { return m_client; }

  // Waits (bounded) until a message arrived, then returns every topic received.
  std::vector<std::string> wait_for_message() {
    std::unique_lock lock(m_mutex);
    m_changed.wait_for(lock, 10s, [&] { return !m_topics.empty(); });
    return m_topics;
  }

 private:
  mqtt::async_client m_client;
  std::mutex m_mutex;
  std::condition_variable m_changed;
  std::vector<std::string> m_topics;
};

TEST_F(CaTest, MosquittoAcceptsOnlyClientsWithCertificatesOfOurCa) {
  init_ca();
  IssueOptions server;
  server.role = CertRole::server;
  server.hosts = {"localhost", "127.0.0.1"};
  auto server_cert = ingest::ca_issue_with_key(ca_dir(), m_dir / "server.key", "", server);
  ASSERT_TRUE(server_cert) << server_cert.error().message;
  write_text(m_dir / "server.crt", server_cert->pem);

  auto device = ingest::ca_sign(ca_dir(), csr_for("press.key", "press-01"), device_options());
  ASSERT_TRUE(device) << device.error().message;
  write_text(m_dir / "press.crt", device->pem);

  IssueOptions client;
  client.role = CertRole::client;
  auto ingest = ingest::ca_issue_with_key(ca_dir(), m_dir / "ingest.key", "ingest@node", client);
  ASSERT_TRUE(ingest) << ingest.error().message;
  write_text(m_dir / "ingest.crt", ingest->pem);

  // A stranger: a valid certificate from another CA.
  ASSERT_TRUE(ingest::ca_init(m_dir / "other-ca", {}));
  auto stranger =
      ingest::ca_sign(m_dir / "other-ca", csr_for("stranger.key", "press-01"), device_options());
  ASSERT_TRUE(stranger) << stranger.error().message;
  write_text(m_dir / "stranger.crt", stranger->pem);

  const auto ca_crt = ca_dir() / "ca.crt";
  TlsBroker broker(m_dir.path(), ca_crt, m_dir / "server.crt", m_dir / "server.key");

  TlsClient node(broker.uri(), "reflow-ingest");
  ASSERT_EQ(node.connect(ca_crt, m_dir / "ingest.crt", m_dir / "ingest.key"), "") << broker.log();
  node.client().subscribe("reflow/v1/+/events", 1)->wait();

  TlsClient press(broker.uri(), "reflow-agent-press-01");
  ASSERT_EQ(press.connect(ca_crt, m_dir / "press.crt", m_dir / "press.key"), "") << broker.log();

  TlsClient anonymous(broker.uri(), "anonymous");
  EXPECT_NE(anonymous.connect(ca_crt, {}, {}), "");
  TlsClient impostor(broker.uri(), "impostor");
  EXPECT_NE(impostor.connect(ca_crt, m_dir / "stranger.crt", m_dir / "stranger.key"), "");

  // The CN is the MQTT user name: press-01 may write its own events topic, not another device's.
  // Both are QoS 1 from one client, so the node would see the refused one first if it passed.
  press.client()
      .publish(mqtt::make_message("reflow/v1/press-02/events", "forged", 1, false))
      ->wait();
  press.client().publish(mqtt::make_message("reflow/v1/press-01/events", "ok", 1, false))->wait();
  EXPECT_EQ(node.wait_for_message(), std::vector<std::string>{"reflow/v1/press-01/events"})
      << broker.log();
}

}  // namespace
