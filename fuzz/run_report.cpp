// Fuzz target: the run report's readers (metrics.jsonl, eval_captions.jsonl,
// run.json of a run folder, possibly hand-edited or cut by a crash).
// Input: the three files' contents separated by NUL bytes. The run folder
// holds eval_images/0.png; a different PNG lies outside it for rows to name.
// Properties: run_report_html returns a whole page or throws a forge error;
// every image the page embeds is eval_images/0.png (none from elsewhere).
#include <filesystem>

#include "core/data/data.h"
#include "core/reporting/report.h"
#include "fuzz/support.h"

using namespace forge;

namespace {

// An embedded image is an attribute value; text that merely reads like a data
// URL (a caption, a config value) is not one, and the page escapes the quote
// such text would need to become an attribute.
constexpr std::string_view kData = "src=\"data:image/png;base64,";

std::vector<std::string> embedded_images(const std::string& html) {
  std::vector<std::string> out;
  for (size_t at = html.find(kData); at != std::string::npos; at = html.find(kData, at + 1)) {
    const size_t begin = at + kData.size();
    out.push_back(html.substr(begin, html.find('"', begin) - begin));
  }
  return out;
}

void write_pngs() {
  Image px;
  px.width = px.height = 2;
  px.rgb.assign(12, 1);
  std::filesystem::create_directories(fuzz::scratch_dir() + "/r/eval_images");
  write_png(fuzz::scratch_dir() + "/r/eval_images/0.png", px);
  px.rgb.assign(12, 250);
  write_png(fuzz::scratch_dir() + "/outside.png", px);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string run = fuzz::scratch_dir() + "/r";
  static const std::string inside = [] {  // eval_images/0.png as the page embeds it
    write_pngs();
    fuzz::write_file("r/metrics.jsonl", "{\"step\": 1, \"loss\": 1.0}\n");
    fuzz::write_file("r/eval_captions.jsonl", "{\"step\": 1, \"image\": \"eval_images/0.png\"}\n");
    const auto images = embedded_images(run_report_html(run));
    if (images.size() != 1) fuzz::violated("the reference report does not embed eval_images/0.png");
    return images[0];
  }();
  const auto parts = fuzz::split_parts(data, size, 3);
  const char* names[] = {"r/metrics.jsonl", "r/eval_captions.jsonl", "r/run.json"};
  for (size_t i = 0; i < 3; ++i) fuzz::write_file(names[i], i < parts.size() ? parts[i] : std::string_view());
  fuzz::expect_forge_errors([&] {
    const std::string html = run_report_html(run);
    const std::string end = "</body></html>\n";
    if (html.rfind("<!DOCTYPE html>", 0) != 0 || html.size() < end.size() ||
        html.compare(html.size() - end.size(), end.size(), end) != 0)
      fuzz::violated("the report is not one whole HTML page");
    for (const auto& img : embedded_images(html))
      if (img != inside) fuzz::violated("the report embeds an image from outside eval_images/");
  });
  return 0;
}
