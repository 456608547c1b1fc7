// apps/train.cpp — `ladnn train`: trains LA-DNN on a COVID-CT folder (models/trainer.h does the work).
#include <cstdio>
#include <iostream>

#include "apps/apps.h"
#include "cuda/profiler.h"
#include "data/split.h"
#include "models/trainer.h"

namespace ladnn::apps {

static void add_train(CLI::App& app) {
  auto c = std::make_shared<TrainConfig>();
  CLI::App* cmd = app.add_subcommand("train", "Train LA-DNN (DenseNet + COVID and lesion heads) on COVID-CT");
  cmd->add_option("--data", c->data_dir, "Data folder (data_split/, CT_COVID/, CT_NonCOVID/); default $LADNN_DATA or ../shared/data/covid-ct");
  cmd->add_option("--out", c->out, "Run folder: last/best.safetensors, metrics.csv, config.json")->required();
  cmd->add_option("--arch", c->arch, "densenet169 | densenet121 | densenet201 | tiny")->capture_default_str();
  cmd->add_flag("--memory-efficient", c->memory_efficient,
                "Dense layers recompute their concatenation-BN-ReLU in backward: less memory, same results");
  cmd->add_flag("--cuda-graph", c->cuda_graph,
                "GPU: capture the training step once as a CUDA graph and replay it (same updates, far fewer "
                "host launches; the short last batch of an epoch runs eagerly)");
  cmd->add_option("--loss", c->loss, "ladnn (COVID x w_main + lesion BCEs) | baseline (COVID only)")->capture_default_str();
  cmd->add_option("--w-main", c->w_main, "Weight of the COVID term in the LA-DNN loss")->capture_default_str();
  cmd->add_option("--epochs", c->epochs, "Epochs in total (a resumed run continues to this)")->capture_default_str();
  cmd->add_option("--batch", c->batch, "Batch size")->capture_default_str();
  cmd->add_option("--lr", c->lr, "Learning rate")->capture_default_str();
  cmd->add_option("--wd", c->wd, "Weight decay (L2 for adam/sgd, decoupled for adamw)")->capture_default_str();
  cmd->add_option("--optimizer", c->optimizer, "adam | adamw | sgd (momentum 0.9)")->capture_default_str();
  cmd->add_option("--schedule", c->schedule, "none | cosine (over --epochs) | step")->capture_default_str();
  cmd->add_option("--step-size", c->step_size, "step schedule: epochs between decays")->capture_default_str();
  cmd->add_option("--gamma", c->gamma, "step schedule: decay factor")->capture_default_str();
  cmd->add_option("--seed", c->seed, "Seed of initialisation, data order and augmentation")->capture_default_str();
  cmd->add_option("--device", c->device, "cpu | cuda")->capture_default_str();
  cmd->add_option("--size", c->image_size, "Image side after resizing")->capture_default_str();
  cmd->add_option("--workers", c->workers, "Data loading threads (-1: one per core beyond the first, 2 to 8)")
      ->capture_default_str();
  cmd->add_option("--cache-mb", c->cache_mb,
                  "Keep decoded images in memory up to this many MiB per split, so later epochs only "
                  "augment (0: decode every epoch)")
      ->capture_default_str();
  cmd->add_option("--init", c->init, "Start from a safetensors file with torchvision DenseNet names (e.g. timm densenet169.tv_in1k)");
  cmd->add_flag("--resume", c->resume, "Continue the run in --out from last.safetensors");
  cmd->add_flag("!--no-augment", c->augment, "Train without random affine and flip");
  cmd->add_flag("--skip-bad", c->skip_bad, "Skip unreadable images with a warning instead of stopping");
  cmd->add_flag("!--no-progress", c->progress, "No progress bar");
  cmd->add_option("--stop-after", c->stop_after, "End this session after N epochs (continue with --resume)");
  cmd->add_option("--max-batches", c->max_batches, "Stop each epoch after this many batches (smoke tests)");
  auto profile = std::make_shared<bool>(false);
  cmd->add_flag("--profile", *profile,
                "GPU: time every op with CUDA events and print the per-op table at the end (as LADNN_PROFILE=1); "
                "with --cuda-graph the replays' ops too, each step then waited for");
  cmd->callback([c, profile] {
    if (c->data_dir.empty()) c->data_dir = data::find_data_dir();
    if (*profile) cuda::profiler::set_enabled(true);
    Trainer trainer(*c);
    trainer.on_epoch = [](const EpochMetrics& m) {
      std::printf("epoch %3d  lr %.3g  train loss %.4f acc %.3f  val loss %.4f acc %.3f auc %.3f  %.0fs %.1f img/s%s\n",
                  m.epoch, m.lr, m.train_loss, m.train_acc, m.val_loss, m.val_acc, m.val_auc, m.seconds,
                  m.images_per_second, m.best ? "  *best" : "");
      std::fflush(stdout);
    };
    trainer.run();
    std::printf("run folder: %s (best.safetensors, last.safetensors, metrics.csv)\n", c->out.c_str());
    if (*profile) cuda::profiler::print(std::cout);
  });
}

static const Registration kTrain{"train", 10, add_train};

}  // namespace ladnn::apps
