// tests/trainer_test.cpp — checkpoints (exact round trip, atomic, refusing bad files), --init from
// torchvision names, and the trainer: a resumed run equals an uninterrupted one.
//
// The trainer runs on a small generated data folder laid out like COVID-CT (CSV with CRLF, PNGs in
// CT_COVID/ and CT_NonCOVID/), so these tests never skip.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <unistd.h>

#include "autograd/functions.h"
#include "data/image.h"
#include "models/checkpoint.h"
#include "models/graphed_step.h"
#include "models/trainer.h"
#include "optim/adam.h"
#include "tensor/safetensors.h"

namespace fs = std::filesystem;
using namespace ladnn;

namespace {

fs::path temp_dir(const std::string& name) {
  fs::path p = fs::temp_directory_path() / ("ladnn_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

/// A COVID-CT-shaped folder: `n` images per split, COVID images carry a bright square.
fs::path make_data_dir(const std::string& name, int n) {
  fs::path root = temp_dir(name);
  fs::create_directories(root / "CT_COVID");
  fs::create_directories(root / "CT_NonCOVID");
  fs::create_directories(root / "data_split");
  Generator g(99);
  for (const char* split : {"train", "val", "test"}) {
    std::ofstream csv(root / "data_split" / (std::string(split) + "_meta.csv"), std::ios::binary);
    csv << "imgname,CVD19,GGO,Csld,CrPa,AirBr,InSepThi\r\n";
    for (int i = 0; i < n; ++i) {
      const bool covid = i % 2 == 0;
      const std::string img = std::string(split) + "_" + std::to_string(i) + ".png";
      data::Image im;
      im.width = im.height = 40;
      im.channels = 3;
      im.pixels.resize(40 * 40 * 3);
      for (auto& px : im.pixels) px = static_cast<uint8_t>(60 + 40 * g.uniform01());
      if (covid) {
        int y0 = 5 + static_cast<int>(g.below(20)), x0 = 5 + static_cast<int>(g.below(20));
        for (int y = y0; y < y0 + 10; ++y)
          for (int x = x0; x < x0 + 10; ++x)
            for (int c = 0; c < 3; ++c) im.pixels[(y * 40 + x) * 3 + c] = 230;
      }
      data::write_png((root / (covid ? "CT_COVID" : "CT_NonCOVID") / img).string(), im);
      // COVID rows: every other one carries lesion labels (GGO, sometimes Csld).
      std::string lesions = covid && i % 4 == 0 ? "1,1,,,," : ",,,,,";
      csv << img << "," << (covid ? "1" : "") << "," << lesions.substr(0, lesions.size() - 1) << "\r\n";
    }
  }
  return root;
}

TrainConfig tiny_config(const fs::path& data, const fs::path& out, int epochs) {
  TrainConfig c;
  c.data_dir = data.string();
  c.out = out.string();
  c.arch = "tiny";
  c.epochs = epochs;
  c.batch = 4;
  c.lr = 1e-3;
  c.image_size = 32;
  c.workers = 2;
  c.progress = false;
  c.schedule = "cosine";
  c.seed = 7;
  return c;
}

void expect_same_state(const StateDict& a, const StateDict& b) {
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) {
    ASSERT_TRUE(b.contains(name)) << name;
    EXPECT_EQ(t.to_vector(), b.at(name).to_vector()) << name;  // bit-exact
  }
}

}  // namespace

TEST(Checkpoint, RoundTripIsExact) {
  fs::path dir = temp_dir("ckpt");
  Generator g(1);
  LaDnn model(DenseNetConfig::tiny(), g);
  Adam opt(model.parameters(), 1e-3);
  // One step so the optimizer has state.
  Variable x(Tensor::normal({2, 3, 32, 32}, 0, 1, g));
  sum(model.forward(x)).backward();
  opt.step();
  TrainingState st;
  st.config = {{"arch", "tiny"}, {"lr", 1e-3}};
  st.epoch = 3;
  st.rng_state = g.state();
  st.best_val_loss = 0.25;
  const std::string path = (dir / "c.safetensors").string();
  save_checkpoint(path, model, &opt, st);
  EXPECT_FALSE(fs::exists(path + ".tmp." + std::to_string(::getpid())));

  Checkpoint c = load_checkpoint(path);
  expect_same_state(c.model, model.state_dict());
  EXPECT_EQ(c.state.epoch, 3);
  EXPECT_EQ(c.state.best_val_loss, 0.25);
  EXPECT_EQ(c.state.rng_state, g.state());
  EXPECT_EQ(c.state.config["arch"], "tiny");
  OptimizerState os = opt.state_dict();
  ASSERT_EQ(c.optimizer.tensors.size(), os.tensors.size());
  for (const auto& [k, t] : os.tensors) EXPECT_EQ(c.optimizer.tensors.at(k).to_vector(), t.to_vector()) << k;
  EXPECT_EQ(c.optimizer.scalars, os.scalars);

  auto restored = model_from_checkpoint(c);
  expect_same_state(restored->state_dict(), model.state_dict());
}

TEST(Checkpoint, TruncatedOrTamperedFilesAreRefused) {
  fs::path dir = temp_dir("ckpt_bad");
  Generator g(2);
  LaDnn model(DenseNetConfig::tiny(), g);
  TrainingState st;
  st.config = {{"arch", "tiny"}};
  const std::string good = (dir / "good.safetensors").string();
  save_checkpoint(good, model, nullptr, st);
  std::string bytes;
  {
    std::ifstream in(good, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  auto write = [&](const std::string& name, const std::string& content) {
    std::string p = (dir / name).string();
    std::ofstream(p, std::ios::binary) << content;
    return p;
  };
  auto expect_refused = [](const std::string& path, const std::string& needle) {
    try {
      load_checkpoint(path);
      ADD_FAILURE() << path << " was accepted";
    } catch (const std::exception& e) {
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_refused(write("truncated.safetensors", bytes.substr(0, bytes.size() / 2)), "");
  expect_refused(write("empty.safetensors", ""), "");
  // Tampered metadata: the format tag, the epoch, the config.
  std::string t1 = bytes;
  t1.replace(t1.find("ladnn-checkpoint-1"), 18, "ladnn-checkpoint-9");
  expect_refused(write("format.safetensors", t1), "format");
  // A model that is not LA-DNN-shaped: drop a tensor by renaming its key.
  std::string t2 = bytes;
  size_t k = t2.find("model.covid_head.weight");
  t2.replace(k, 6, "other.");
  expect_refused(write("renamed.safetensors", t2), "other.covid_head.weight");
  // A plain torchvision file is not a checkpoint (but works with --init).
  save_safetensors((dir / "plain.safetensors").string(), {{"features.conv0.weight", Tensor::zeros({1})}});
  expect_refused((dir / "plain.safetensors").string(), "--init");
}

TEST(Checkpoint, InitFromTorchvisionNamesWithLegacyKeys) {
  // The committed tiny weights carry torchvision names (exported from PyTorch).
  SafetensorsFile f = load_safetensors(std::string(LADNN_GOLDEN_DIR) + "/densenet/tiny_weights.safetensors");
  fs::path dir = temp_dir("init");
  std::vector<std::pair<std::string, Tensor>> legacy;
  for (const auto& [name, t] : f.tensors) {
    if (name.rfind("covid_head", 0) == 0 || name.rfind("lesion_head", 0) == 0) continue;  // torchvision has none
    // Files from before PyTorch 0.4.1 use the legacy names and have no num_batches_tracked.
    if (name.find("num_batches_tracked") != std::string::npos && name.find(".norm1.") != std::string::npos) continue;
    std::string n = name;
    size_t p = n.find(".norm1.");
    if (p != std::string::npos) n.replace(p, 7, ".norm.1.");  // the legacy spelling
    legacy.emplace_back(n, t);
  }
  legacy.emplace_back("classifier.weight", Tensor::zeros({1000, 128}));
  legacy.emplace_back("classifier.bias", Tensor::zeros({1000}));
  const std::string path = (dir / "tv.safetensors").string();
  save_safetensors(path, legacy);
  EXPECT_EQ(rename_legacy_densenet_key("features.denseblock1.denselayer1.norm.1.weight"),
            "features.denseblock1.denselayer1.norm1.weight");
  EXPECT_EQ(rename_legacy_densenet_key("features.norm5.weight"), "features.norm5.weight");

  Generator g(5);
  LaDnn model(DenseNetConfig::tiny(), g);
  Tensor head_before = model.state_dict().at("covid_head.weight").clone();
  EXPECT_EQ(init_from_pretrained(model, path), legacy.size() - 2);
  for (const auto& [name, t] : f.tensors) {
    if (name.rfind("covid_head", 0) == 0 || name.rfind("lesion_head", 0) == 0) continue;
    if (name.find("num_batches_tracked") != std::string::npos && name.find(".norm1.") != std::string::npos) {
      EXPECT_EQ(model.state_dict().at(name).item(), 0.0) << name;  // absent from the file: stays 0
      continue;
    }
    EXPECT_EQ(model.state_dict().at(name).to_vector(), t.to_vector()) << name;
  }
  EXPECT_EQ(model.state_dict().at("covid_head.weight").to_vector(), head_before.to_vector());

  // A file for another architecture is refused with the keys named.
  LaDnn d121(DenseNetConfig::densenet121(), g);
  try {
    init_from_pretrained(d121, path);
    FAIL() << "tiny weights must not fit densenet121";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("missing"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("features.denseblock1.denselayer3"), std::string::npos);
  }
}

TEST(Trainer, ResumedRunEqualsUninterruptedRun) {
  fs::path data = make_data_dir("resume_data", 12);
  fs::path straight = temp_dir("run_straight"), split = temp_dir("run_split");

  std::vector<EpochMetrics> full = Trainer(tiny_config(data, straight, 3)).run();
  ASSERT_EQ(full.size(), 3u);
  TrainConfig first = tiny_config(data, split, 3);
  first.stop_after = 2;
  Trainer(first).run();                                  // stopped after 2 of 3 epochs...
  TrainConfig more = tiny_config(data, split, 3);
  more.resume = true;
  std::vector<EpochMetrics> resumed = Trainer(more).run();  // ...and continued to 3
  ASSERT_EQ(resumed.size(), 3u);

  Checkpoint a = load_checkpoint((straight / "last.safetensors").string());
  Checkpoint b = load_checkpoint((split / "last.safetensors").string());
  expect_same_state(a.model, b.model);
  ASSERT_EQ(a.optimizer.tensors.size(), b.optimizer.tensors.size());
  for (const auto& [k, t] : a.optimizer.tensors) EXPECT_EQ(t.to_vector(), b.optimizer.tensors.at(k).to_vector()) << k;
  EXPECT_EQ(a.state.epoch, 3);
  EXPECT_EQ(full[2].train_loss, resumed[2].train_loss);
  EXPECT_EQ(full[2].lr, resumed[2].lr);  // the cosine schedule resumed too
  EXPECT_TRUE(fs::exists(straight / "best.safetensors"));
  // metrics.csv has one row per epoch.
  std::ifstream csv(split / "metrics.csv");
  int lines = 0;
  for (std::string l; std::getline(csv, l);) ++lines;
  EXPECT_EQ(lines, 4);
}

TEST(Trainer, LearnsTheGeneratedTask) {
  fs::path data = make_data_dir("learn_data", 24);
  fs::path out = temp_dir("run_learn");
  TrainConfig c = tiny_config(data, out, 12);
  c.lr = 3e-3;
  c.augment = false;
  std::vector<EpochMetrics> h = Trainer(c).run();
  // Bright squares vs none: the validation set separates well after a few epochs.
  EXPECT_LT(h.back().train_loss, h.front().train_loss);
  EXPECT_GE(h.back().val_auc, 0.9);
}

TEST(GraphedTrainStep, RefusesAModelOnTheCpu) {
  Generator gen(3);
  LaDnn model(DenseNetConfig::tiny(), gen);
  Adam opt(model.parameters(), 1e-3);
  try {
    GraphedTrainStep step(model, opt, LossConfig{});
    FAIL() << "a CPU model was accepted";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("needs the model on a GPU (--device cuda)"), std::string::npos) << e.what();
  }
}

TEST(Trainer, BadConfigurationsAreSentences) {
  TrainConfig c;
  c.data_dir = "/nonexistent";
  c.out = temp_dir("bad").string();
  c.arch = "resnet";
  EXPECT_THROW(Trainer(c).run(), std::invalid_argument);
  c.arch = "tiny";
  c.batch = 1;
  EXPECT_THROW(Trainer(c).run(), std::invalid_argument);
  c.batch = 4;
  try {
    Trainer(c).run();
    FAIL() << "a missing data folder must be an error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent"), std::string::npos) << e.what();
  }
  c.resume = true;
  c.out = temp_dir("bad_resume").string();
  EXPECT_THROW(Trainer(c).run(), std::runtime_error);
  c.resume = false;
  c.device = "cpu";
  c.cuda_graph = true;
  try {
    Trainer(c).run();
    FAIL() << "--cuda-graph on the CPU must be an error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("--cuda-graph needs --device cuda"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(TrainConfig::from_json(c.to_json()).cuda_graph);  // saved with the run
  c.cuda_graph = false;
  auto expect_sentence = [&](const std::string& flag, const std::string& value) {
    try {
      Trainer(c).run();
      ADD_FAILURE() << flag << " " << value << " was accepted";
    } catch (const std::invalid_argument& e) {
      const std::string what = e.what();
      EXPECT_TRUE(what.find(flag) != std::string::npos && what.find(value) != std::string::npos) << what;
    }
  };
  c.workers = -2;
  expect_sentence("--workers", "-2");
  c.workers = -1;
  c.cache_mb = -5;
  expect_sentence("--cache-mb", "-5");
  c.cache_mb = 64;
  EXPECT_EQ(TrainConfig::from_json(c.to_json()).cache_mb, 64);
  EXPECT_THROW(TrainConfig::from_json({{"epochz", 3}}), std::invalid_argument);
  EXPECT_THROW(TrainConfig::from_json({{"epochs", "three"}}), std::invalid_argument);
}
