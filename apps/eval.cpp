// apps/eval.cpp — `ladnn eval`: a trained LA-DNN on a labelled split (test by default).
//
// Loads the checkpoint, runs the model over the split (models/trainer.h predict()), computes the report
// (models/evaluation.h, where the tests are), prints a table and writes into --out:
//   report.json      every number, the checkpoint, split, threshold and the per-image predictions
//   roc.svg, pr.svg  the COVID head and each lesion head that has both classes among its images
//   reliability.svg  the COVID head's calibration (10 uniform bins)
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>

#include "apps/apps.h"
#include "apps/svg.h"
#include "data/loader.h"
#include "data/split.h"
#include "models/cam_report.h"
#include "models/checkpoint.h"
#include "models/evaluation.h"

namespace fs = std::filesystem;

namespace ladnn::apps {

namespace {

struct EvalOptions {
  std::string model;
  std::string data_dir;
  std::string split = "test";
  double threshold = 0.5;
  int bootstrap = 1000;
  uint64_t seed = 0;
  std::string out;
  int batch = 32;
  int workers = 2;
  bool skip_bad = false;
  int cams = 0;
};

void write_file(const fs::path& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
  f.close();
  if (!f) throw std::runtime_error("--out: cannot write '" + path.string() + "'");
}

/// The data folder to read, or a sentence saying why there is none.
std::string resolve_data_dir(const EvalOptions& o) {
  std::string dir = o.data_dir.empty() ? data::find_data_dir() : o.data_dir;
  // Name where the folder came from: the flag, $LADNN_DATA, or the default search.
  const char* env = std::getenv("LADNN_DATA");
  const std::string what = !o.data_dir.empty()      ? "--data: the folder"
                           : env != nullptr && *env ? "$LADNN_DATA: the folder"
                                                    : "the data folder";
  if (dir.empty())
    throw std::runtime_error(
        "no data folder found; pass --data DIR (a folder with data_split/, CT_COVID/ and CT_NonCOVID/) or "
        "set LADNN_DATA");
  if (!fs::is_directory(dir)) throw std::runtime_error(what + " '" + dir + "' does not exist");
  const fs::path csv = fs::path(dir) / "data_split" / (o.split + "_meta.csv");
  if (!fs::is_regular_file(csv))
    throw std::runtime_error(what + " '" + dir + "' has no " + o.split + " split: " + csv.string() +
                             " does not exist");
  return dir;
}

void run_eval(const EvalOptions& o) {
  // Everything a user can get wrong is checked before the slow part.
  if (!(o.threshold >= 0.0 && o.threshold <= 1.0))
    throw std::runtime_error("--threshold must lie in [0, 1], got " + std::to_string(o.threshold));
  if (!fs::exists(o.model)) throw std::runtime_error("--model: no checkpoint at '" + o.model + "'");
  if (!fs::is_regular_file(o.model)) throw std::runtime_error("--model: '" + o.model + "' is not a file");
  const std::string data_dir = resolve_data_dir(o);

  Checkpoint ckpt = load_checkpoint(o.model);
  auto model = model_from_checkpoint(ckpt);
  const nlohmann::json& cfg = ckpt.state.config;
  const int image_size = cfg.value("image_size", 224);
  const LossConfig loss{loss_mode_by_name(cfg.value("loss", std::string("ladnn"))), cfg.value("w_main", 5.0)};

  EvaluationOptions eo;
  eo.threshold = o.threshold;
  eo.bootstrap.resamples = o.bootstrap;
  eo.bootstrap.seed = o.seed;

  data::LoaderOptions lo;
  lo.batch_size = o.batch;
  lo.image_size = image_size;
  lo.workers = o.workers;
  lo.skip_bad = o.skip_bad;
  data::Loader loader(data::read_split(data_dir, o.split), lo);
  const fs::path out =
      o.out.empty() ? fs::absolute(o.model).parent_path() / ("eval-" + o.split) : fs::path(o.out);
  std::error_code ec;
  fs::create_directories(out, ec);
  if (ec || !fs::is_directory(out))
    throw std::runtime_error("--out: cannot create the folder '" + out.string() + "'" +
                             (ec ? ": " + ec.message() : std::string()));

  std::fprintf(stderr,
               "ladnn eval: running the model over the %zu images of the %s split (batches of %d) ...\n",
               loader.samples().size(), o.split.c_str(), o.batch);
  Predictions p;
  try {
    p = predict(*model, loader, loss);
  } catch (const std::runtime_error& e) {
    // A worker's error names the image ("Loader: epoch 0, batch 3: …"); say how to get past it.
    if (o.skip_bad || std::string(e.what()).rfind("Loader:", 0) != 0) throw;
    throw std::runtime_error(std::string(e.what()) + " (pass --skip-bad to leave unreadable images out)");
  }
  if (p.names.empty()) throw std::runtime_error("no image of the " + o.split + " split could be read");
  const Evaluation e = evaluate(p, eo);

  std::printf("ladnn eval — %s (%s, epoch %lld), %s split of %s\n", o.model.c_str(),
              cfg.value("arch", std::string("?")).c_str(), (long long)ckpt.state.epoch, o.split.c_str(),
              data_dir.c_str());
  if (loader.skipped() > 0)
    std::printf("%lld unreadable image%s left out (--skip-bad)\n", (long long)loader.skipped(),
                loader.skipped() == 1 ? "" : "s");
  std::printf("%s", format_evaluation(e).c_str());

  nlohmann::json report = to_json(e, p);
  report["checkpoint"] = fs::weakly_canonical(fs::absolute(o.model)).string();
  report["split"] = o.split;
  report["data_dir"] = fs::weakly_canonical(fs::absolute(data_dir)).string();
  report["skipped"] = loader.skipped();
  report["model"] = {{"arch", cfg.value("arch", std::string())},
                     {"epoch", ckpt.state.epoch},
                     {"image_size", image_size},
                     {"loss", cfg.value("loss", std::string("ladnn"))},
                     {"w_main", loss.w_main},
                     {"seed", cfg.value("seed", nlohmann::json(nullptr))}};

  // Charts: the COVID head, and each lesion head where both classes occur among its images. The
  // legend says how many images each curve is over (the lesion heads see only the labelled ones).
  auto named = [](const HeadData& h) {
    int64_t pos = 0;
    for (int v : h.y) pos += v;
    HeadScores s{h.name + ": " + std::to_string(pos) + "/" + std::to_string(h.y.size()) + " positive", h.y,
                 h.prob};
    return std::make_pair(s, pos > 0 && pos < static_cast<int64_t>(h.y.size()));
  };
  std::vector<HeadScores> heads{named(covid_scores(p)).first};
  for (const HeadData& h : lesion_scores(p))
    if (auto [s, both_classes] = named(h); both_classes) heads.push_back(std::move(s));
  const std::string where = " — " + o.split + " split";

  // Grad-CAM++ grids of the best- and worst-classified images (--cams N).
  if (o.cams > 0) {
    std::map<std::string, std::string> path_of;
    for (const data::Sample& s : loader.samples()) path_of[s.name] = s.path;
    const std::vector<CamPick> picks = pick_best_and_worst(p.covid, p.covid_prob, o.cams);
    fs::create_directories(out / "cams");
    std::vector<std::string> images, files;
    nlohmann::json cams = nlohmann::json::array();
    for (size_t k = 0; k < picks.size(); ++k) {
      const size_t i = picks[k].index;
      char prefix[16];
      std::snprintf(prefix, sizeof prefix, "%02zu_", k + 1);
      const std::string file =
          (out / "cams" / (prefix + picks[k].kind + "_" + fs::path(p.names[i]).stem().string() + ".png")).string();
      images.push_back(path_of.at(p.names[i]));
      files.push_back(file);
      cams.push_back({{"image", p.names[i]}, {"file", file}, {"kind", picks[k].kind}, {"covid", p.covid[i]},
                      {"covid_prob", p.covid_prob[i]}});
    }
    std::fprintf(stderr, "ladnn eval: Grad-CAM++ grids of %zu images ...\n", picks.size());
    write_cam_grids(*model, images, files, image_size, ExplainConfig{});
    report["cams"] = cams;
  }
  write_file(out / "report.json", report.dump(2) + "\n");
  write_file(out / "roc.svg", roc_svg("ROC" + where, heads));
  write_file(out / "pr.svg", pr_svg("Precision-recall" + where, heads));
  write_file(out / "reliability.svg", reliability_svg("Reliability (COVID)" + where, {heads.front()}));
  std::printf("\nreport: %s (and roc.svg, pr.svg, reliability.svg)\n",
              (out / "report.json").string().c_str());
}

void add_eval(CLI::App& app) {
  auto o = std::make_shared<EvalOptions>();
  CLI::App* cmd = app.add_subcommand("eval",
                                     "Evaluate a checkpoint on a labelled split: metrics with bootstrap CIs, "
                                     "report.json, ROC/PR/reliability SVGs");
  cmd->add_option("--model", o->model,
                  "A checkpoint written by ladnn train (best.safetensors, last.safetensors)")
      ->required();
  cmd->add_option(
      "--data", o->data_dir,
      "Data folder (data_split/, CT_COVID/, CT_NonCOVID/); default $LADNN_DATA or ../shared/data/covid-ct");
  cmd->add_option("--split", o->split, "Which split to evaluate")
      ->capture_default_str()
      ->check(CLI::IsMember({"test", "val", "train"}));
  cmd->add_option("--threshold", o->threshold, "COVID predicted when its probability >= this")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--bootstrap", o->bootstrap, "Bootstrap resamples for the 95% intervals (0: none)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--seed", o->seed, "Seed of the bootstrap")->capture_default_str();
  cmd->add_option("--out", o->out, "Report folder; default eval-<split> next to the checkpoint");
  cmd->add_option("--batch", o->batch, "Images per forward pass")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--workers", o->workers, "Data loading threads")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_flag("--skip-bad", o->skip_bad, "Skip unreadable images with a warning instead of stopping");
  cmd->add_option("--cams", o->cams,
                  "Add Grad-CAM++ grids of N images to the report: the best-classified half, then the worst")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->callback([o] { run_eval(*o); });
}

}  // namespace

static const Registration kEval{"eval", 20, add_eval};

}  // namespace ladnn::apps
