// The run report: one self-contained HTML file (inline CSS, SVG curves and
// base64 images; nothing fetched when viewed) drawn from what a run folder
// holds: metrics.jsonl (required), run.json, eval_captions.jsonl and
// eval_images/. It shows the loss, learning-rate, gradient-norm, throughput,
// MFU and evaluation curves, the held-out images of the latest evaluation
// with their reference and generated captions, the plugins with their
// versions and files, and the resolved config.
#pragma once

#include <string>

#include "forge/export.h"

namespace forge {

// The page for `run_dir`. UserError naming the folder when it holds no
// metrics.jsonl (not a forge run folder, or one run with metrics.jsonl = false).
FORGE_API std::string run_report_html(const std::string& run_dir);

// Writes run_report_html(run_dir) to `out` (replaced atomically).
FORGE_API void write_run_report(const std::string& run_dir, const std::string& out);

}  // namespace forge
