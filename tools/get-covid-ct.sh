#!/usr/bin/env bash
# tools/get-covid-ct.sh — downloads the COVID-CT images and the LA-DNN split and lays them out as ladnn
# reads them (data/split.h):
#
#   DEST/CT_COVID/       349 slices of COVID-19 patients   (UCSD-AI4H/COVID-CT, Images-processed/CT_COVID.zip)
#   DEST/CT_NonCOVID/    397 slices without COVID-19       (UCSD-AI4H/COVID-CT, Images-processed/CT_NonCOVID.zip)
#   DEST/data_split/     train_meta.csv (425 rows), val_meta.csv (118), test_meta.csv (203) and
#                        COVID-CT-MetaInfo_new.csv — the LA-DNN split with lesion labels
#                        (xiaoxuegao499/LA-DNN-for-COVID-19-diagnosis, data_split/)
#
# Usage: bash tools/get-covid-ct.sh [--splits DIR] [--force] [DEST]
#   DEST          where to put the data; default ../shared/data/covid-ct next to this checkout, which is
#                 where ladnn looks when $LADNN_DATA is unset. Anywhere else: export LADNN_DATA=DEST.
#   --splits DIR  copy the split CSVs from DIR (a clone of the LA-DNN repository's data_split/, or any
#                 folder holding train_meta.csv, val_meta.csv, test_meta.csv) instead of downloading them.
#                 Use it when GitHub's raw file URLs are unreachable or have moved.
#   --force       download again even if DEST already holds the images.
# Needs curl (or wget) and unzip. The data is for research use (see the COVID-CT repository's terms).
set -euo pipefail

repo_root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$repo_root/../shared/data/covid-ct"
splits_dir=""
force=0
while [ $# -gt 0 ]; do
  case "$1" in
    --splits) [ $# -ge 2 ] || { echo "get-covid-ct: --splits needs a folder" >&2; exit 2; }; splits_dir="$2"; shift 2 ;;
    --force) force=1; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    -*) echo "get-covid-ct: unknown option '$1' (see --help)" >&2; exit 2 ;;
    *) dest="$1"; shift ;;
  esac
done

# The upstream locations. Branch names are tried in order: both repositories date from 2020, when
# GitHub's default branch was "master"; HEAD follows a renamed default branch. The two variables can be
# overridden (a mirror, or file:// URLs to test this script offline).
images_repo="${COVID_CT_IMAGES_BASE:-https://github.com/UCSD-AI4H/COVID-CT/raw}"
splits_repo="${LADNN_SPLITS_BASE:-https://raw.githubusercontent.com/xiaoxuegao499/LA-DNN-for-COVID-19-diagnosis}"
branches=(master HEAD main)
split_files=(train_meta.csv val_meta.csv test_meta.csv)

die() { echo "get-covid-ct: $*" >&2; exit 1; }
command -v unzip >/dev/null || die "unzip is needed (Debian: apt-get install unzip)"
if command -v curl >/dev/null; then
  fetch() { curl -fsSL --retry 3 -o "$2" "$1"; }
elif command -v wget >/dev/null; then
  fetch() { wget -q -O "$2" "$1"; }
else
  die "curl or wget is needed"
fi

# fetch_first OUT PATH BASE: downloads BASE/<branch>/PATH for the first branch that answers.
fetch_first() {
  local out="$1" path="$2" base="$3" b
  for b in "${branches[@]}"; do
    if fetch "$base/$b/$path" "$out" 2>/dev/null; then
      echo "get-covid-ct:   $base/$b/$path"
      return 0
    fi
  done
  return 1
}

count_images() { find "$1" -maxdepth 1 -type f \( -iname '*.png' -o -iname '*.jpg' -o -iname '*.jpeg' \) | wc -l; }

mkdir -p "$dest"
dest="$(cd "$dest" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# ---- images -------------------------------------------------------------------------------------
for cls in CT_COVID CT_NonCOVID; do
  if [ "$force" -eq 0 ] && [ -d "$dest/$cls" ] && [ "$(count_images "$dest/$cls")" -gt 0 ]; then
    echo "get-covid-ct: $dest/$cls already holds $(count_images "$dest/$cls") images (--force to download again)"
    continue
  fi
  echo "get-covid-ct: downloading $cls.zip"
  fetch_first "$tmp/$cls.zip" "Images-processed/$cls.zip" "$images_repo" ||
    die "cannot download Images-processed/$cls.zip from $images_repo/{${branches[*]}}; download it by hand from https://github.com/UCSD-AI4H/COVID-CT and unzip it into $dest/$cls/"
  mkdir -p "$tmp/$cls"
  unzip -q -o "$tmp/$cls.zip" -d "$tmp/$cls"
  # The archive holds a folder of images (plus, in some versions, macOS metadata): take the images only,
  # flattened into DEST/<class>/ under their own names, which the split CSVs use.
  rm -rf "$dest/$cls.partial"
  mkdir -p "$dest/$cls.partial"
  find "$tmp/$cls" -type f \( -iname '*.png' -o -iname '*.jpg' -o -iname '*.jpeg' \) \
    -not -path '*/__MACOSX/*' -not -name '._*' -exec mv -f {} "$dest/$cls.partial/" \;
  rm -rf "${dest:?}/$cls"
  mv "$dest/$cls.partial" "$dest/$cls"
  rm -rf "${tmp:?}/$cls" "$tmp/$cls.zip"
done

# ---- LA-DNN split -------------------------------------------------------------------------------
mkdir -p "$dest/data_split"
if [ -n "$splits_dir" ]; then
  for f in "${split_files[@]}"; do
    [ -f "$splits_dir/$f" ] || die "$splits_dir/$f is missing (--splits needs train_meta.csv, val_meta.csv, test_meta.csv)"
    cp "$splits_dir/$f" "$dest/data_split/$f"
  done
  [ -f "$splits_dir/COVID-CT-MetaInfo_new.csv" ] && cp "$splits_dir/COVID-CT-MetaInfo_new.csv" "$dest/data_split/"
  echo "get-covid-ct: copied the split CSVs from $splits_dir"
else
  echo "get-covid-ct: downloading the LA-DNN split"
  for f in "${split_files[@]}" COVID-CT-MetaInfo_new.csv; do
    if ! fetch_first "$tmp/$f" "data_split/$f" "$splits_repo"; then
      [ "$f" = COVID-CT-MetaInfo_new.csv ] && { echo "get-covid-ct:   (optional $f not found; skipped)"; continue; }
      die "cannot download data_split/$f from $splits_repo/{${branches[*]}}. Clone
  https://github.com/xiaoxuegao499/LA-DNN-for-COVID-19-diagnosis and rerun with --splits <clone>/data_split"
    fi
    mv "$tmp/$f" "$dest/data_split/$f"
  done
fi

# ---- check --------------------------------------------------------------------------------------
status=0
n_covid="$(count_images "$dest/CT_COVID")"
n_noncovid="$(count_images "$dest/CT_NonCOVID")"
echo "get-covid-ct: CT_COVID $n_covid images (expected 349), CT_NonCOVID $n_noncovid (expected 397)"
if [ "$n_covid" -ne 349 ] || [ "$n_noncovid" -ne 397 ]; then
  echo "get-covid-ct: warning: image counts differ from the LA-DNN paper's" >&2
  status=1
fi
declare -A expected_rows=([train_meta.csv]=425 [val_meta.csv]=118 [test_meta.csv]=203)
missing=0
for f in "${split_files[@]}"; do
  csv="$dest/data_split/$f"
  header="$(head -n 1 "$csv" | tr -d '\r\357\273\277')"
  [ "$header" = "imgname,CVD19,GGO,Csld,CrPa,AirBr,InSepThi" ] || die "$csv: unexpected header '$header'"
  rows="$(tail -n +2 "$csv" | tr -d '\r' | grep -c . || true)"
  echo "get-covid-ct: $f $rows rows (expected ${expected_rows[$f]})"
  [ "$rows" -eq "${expected_rows[$f]}" ] || { echo "get-covid-ct: warning: $f has $rows rows" >&2; status=1; }
  while IFS=, read -r name _; do
    name="${name%$'\r'}"
    [ -z "$name" ] && continue
    if [ ! -f "$dest/CT_COVID/$name" ] && [ ! -f "$dest/CT_NonCOVID/$name" ]; then
      [ "$missing" -lt 5 ] && echo "get-covid-ct: $f names '$name', which is in neither image folder" >&2
      missing=$((missing + 1))
    fi
  done < <(tail -n +2 "$csv")
done
[ "$missing" -eq 0 ] || { echo "get-covid-ct: $missing split rows have no image" >&2; status=1; }

if [ "$status" -eq 0 ]; then
  echo "get-covid-ct: done: $dest"
else
  echo "get-covid-ct: finished with warnings (above): $dest" >&2
fi
if [ "$dest" != "$(cd "$repo_root/.." && pwd)/shared/data/covid-ct" ]; then
  echo "get-covid-ct: ladnn looks in ../shared/data/covid-ct by default; point it here with: export LADNN_DATA=$dest"
fi
exit "$status"
