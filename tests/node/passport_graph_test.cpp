// SPDX-License-Identifier: AGPL-3.0-or-later
// The material passport as DOT text and SVG (reflow/node/passport_graph.hpp).
#include <reflow/node/passport_graph.hpp>

#include <gtest/gtest.h>

namespace ingest {
namespace {

TraceNode resource(std::string id, std::vector<TraceNode> children = {}) {
  TraceNode node;
  node.kind = TraceNode::Kind::resource;
  node.id = std::move(id);
  node.children = std::move(children);
  return node;
}

TraceNode process(std::string id, std::vector<TraceNode> children = {}) {
  TraceNode node = resource(std::move(id), std::move(children));
  node.kind = TraceNode::Kind::process;
  return node;
}

TraceNode event(std::string id, nlohmann::ordered_json payload,
                std::vector<TraceNode> children = {}) {
  TraceNode node;
  node.kind = TraceNode::Kind::event;
  node.id = std::move(id);
  node.device = "dev-1";
  node.event = std::move(payload);
  node.children = std::move(children);
  return node;
}

// part:1 was produced by job:1 from spool:a; spool:a is met twice (the shared input).
TraceNode bracket_trace() {
  const nlohmann::ordered_json produce = {
      {"action", "produce"},
      {"hasPointInTime", "2026-11-21T09:40:19Z"},
      {"resourceQuantity", {{"hasNumericalValue", 1}, {"hasUnit", "one"}}},
      {"stream", "S1"},
      {"seq", 3}};
  const nlohmann::ordered_json consume = {
      {"action", "consume"},
      {"hasPointInTime", "2026-11-21T09:00:00Z"},
      {"resourceQuantity", {{"hasNumericalValue", 12.5}, {"hasUnit", "gram"}}},
      {"note", "first layer"}};
  TraceNode repeated = resource("spool:a");
  repeated.repeated = true;
  return resource("part:1",
                  {event("E3", produce,
                         {process("job:1", {event("E1", consume, {resource("spool:a")}),
                                            event("E2", consume, {std::move(repeated)})})})});
}

TEST(PassportDotTest, OneNodePerResourceProcessAndEventWithEdgesAlongTheMaterial) {
  EXPECT_EQ(
      passport_dot(bracket_trace()),
      "digraph passport {\n"
      "  rankdir=LR;\n"
      "  node [fontname=\"sans-serif\" fontsize=10];\n"
      "  n1 [shape=box style=\"rounded,filled\" fillcolor=\"#dce8f5\" "
      "label=\"resource\\npart:1\" tooltip=\"part:1\" URL=\"/events?resource=part%3A1\"];\n"
      "  n2 [shape=ellipse label=\"produce 1 one\\n2026-11-21T09:40:19Z\\ndevice dev-1\" "
      "tooltip=\"event E3\" URL=\"/event?device=dev-1&amp;stream=S1&amp;seq=3\"];\n"
      "  n3 [shape=hexagon style=filled fillcolor=\"#f5ecd0\" label=\"process\\njob:1\" "
      "tooltip=\"job:1\" URL=\"/events?process=job%3A1\"];\n"
      "  n4 [shape=ellipse label=\"consume 12.5 gram\\n2026-11-21T09:00:00Z\\ndevice "
      "dev-1\\nfirst layer\" tooltip=\"event E1\"];\n"
      "  n5 [shape=box style=\"rounded,filled\" fillcolor=\"#dce8f5\" "
      "label=\"resource\\nspool:a\" tooltip=\"spool:a\" URL=\"/events?resource=spool%3Aa\"];\n"
      "  n6 [shape=ellipse label=\"consume 12.5 gram\\n2026-11-21T09:00:00Z\\ndevice "
      "dev-1\\nfirst layer\" tooltip=\"event E2\"];\n"
      "  n2 -> n1;\n"
      "  n3 -> n2;\n"
      "  n4 -> n3;\n"
      "  n5 -> n4;\n"
      "  n5 -> n6;\n"
      "  n6 -> n3;\n"
      "}\n");
}

// What a device signed is only ever text inside a quoted DOT string: quotes, backslashes (that
// would make Graphviz escapes such as \N), line breaks and angle brackets stay text.
TEST(PassportDotTest, DeviceStringsCannotLeaveTheirQuotedLabel) {
  const std::string hostile = "x\" shape=none label=<<b>b</b>> \\N\n<script>alert(1)</script>";
  const std::string dot =
      passport_dot(event("E1", {{"action", "use"}, {"note", hostile}}, {resource(hostile)}));
  EXPECT_NE(dot.find(R"(label="resource\nx\" shape=none label=<<b>b</b>> \\\\N\\x0a<script>)"),
            std::string::npos)
      << dot;
  // Notes are cut to 40 bytes.
  EXPECT_NE(dot.find(R"(\nx\" shape=none label=<<b>b</b>> \\\\N\\x0a<s…")"), std::string::npos)
      << dot;
}

TEST(RenderSvgTest, DrawsTheTraceWithLabelsEscapedAsXml) {
  if (!can_render_svg()) GTEST_SKIP() << "built without Graphviz (REFLOW_GRAPHVIZ=OFF)";
  const std::string hostile = "<script>alert('x')</script> & \"q\" \\N";
  // Were the reference not one quoted label, it would set the shape and an HTML-like label.
  const std::string reference = "part:1\" shape=none label=<<b>b</b>>";
  auto svg = render_svg(passport_dot(resource(
      reference,
      {event("E1", {{"action", "use"}, {"note", hostile}, {"stream", "S"}, {"seq", 1}})})));
  ASSERT_TRUE(svg) << svg.error().message;
  EXPECT_TRUE(svg->starts_with("<svg")) << svg->substr(0, 200);
  EXPECT_NE(svg->find("</svg>"), std::string::npos);
  EXPECT_NE(svg->find(">part:1&quot; shape=none label=&lt;&lt;b&gt;b&lt;/b&gt;&gt;</text>"),
            std::string::npos)
      << *svg;
  EXPECT_EQ(svg->find("<b>"), std::string::npos) << *svg;
  EXPECT_NE(svg->find("&lt;script&gt;alert(&#39;x&#39;)&lt;/s"), std::string::npos) << *svg;
  EXPECT_EQ(svg->find("<script"), std::string::npos) << *svg;
  EXPECT_NE(svg->find("xlink:href=\"/event?device=dev-1&amp;stream=S&amp;seq=1\""),
            std::string::npos)
      << *svg;
}

TEST(RenderSvgTest, RefusesTextThatIsNotDot) {
  if (!can_render_svg()) GTEST_SKIP() << "built without Graphviz (REFLOW_GRAPHVIZ=OFF)";
  auto svg = render_svg("digraph { a -> ");
  ASSERT_FALSE(svg);
  EXPECT_EQ(svg.error().code, agent::ErrorCode::invalid_argument);
  EXPECT_NE(svg.error().message.find("syntax error"), std::string::npos) << svg.error().message;
}

}  // namespace
}  // namespace ingest
