#!/usr/bin/env bash
# Loads a `ddrep report` gallery in headless Chromium, checks that no link or image is broken
# and saves a screenshot next to it.
#   tools/gallery_check.sh results/<name>/report      (or the path of its index.html)
# Checks: (1) every relative href/src of the DOM Chromium built names an existing file, (2) no
# image that Chromium finished loading is broken (the page's load handler counts them into
# body[data-broken-images]), then writes <report>/gallery.png (1280x2000).
# Needs chromium (installed with apt-get when missing and apt is available as root).
set -euo pipefail

target="${1:?usage: tools/gallery_check.sh results/<name>/report}"
if [ -d "$target" ]; then index="$target/index.html"; else index="$target"; fi
[ -f "$index" ] || { echo "gallery-check: $index not found: run ddrep report first" >&2; exit 1; }
report_dir="$(cd "$(dirname "$index")" && pwd)"
index="$report_dir/$(basename "$index")"

browser=""
for b in chromium chromium-browser google-chrome google-chrome-stable; do
  if command -v "$b" >/dev/null 2>&1; then browser="$b"; break; fi
done
if [ -z "$browser" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "gallery-check: installing chromium with apt-get" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium >/dev/null \
      || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium >/dev/null; }
    browser=chromium
  else
    echo "gallery-check: no chromium found; install it (Debian: apt-get install chromium)" >&2
    exit 1
  fi
fi

# Root in a container needs --no-sandbox; a throwaway profile keeps runs independent.
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
flags=(--headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$profile" --allow-file-access-from-files --virtual-time-budget=10000)
url="file://$index"

dom="$profile/dom.html"
"$browser" "${flags[@]}" --dump-dom "$url" >"$dom" 2>"$profile/chromium.log" || { cat "$profile/chromium.log" >&2; echo "gallery-check: chromium could not load $url" >&2; exit 1; }
[ -s "$dom" ] || { cat "$profile/chromium.log" >&2; echo "gallery-check: chromium returned an empty DOM for $url" >&2; exit 1; }

# Every href/src value of the loaded DOM (Chromium writes attributes with double quotes).
broken=0 checked=0
while IFS= read -r link; do
  case "$link" in
    ""|"#"*|http:*|https:*|data:*|mailto:*|javascript:*) continue ;;
    /*) echo "not relative: $link" >&2; broken=$((broken + 1)); continue ;;
  esac
  path="${link%%#*}"; path="${path%%\?*}"
  path="$(printf '%b' "${path//%/\\x}")"   # percent-decoding
  path="${path//&amp;/&}"
  checked=$((checked + 1))
  if [ ! -e "$report_dir/$path" ]; then echo "broken: $link" >&2; broken=$((broken + 1)); fi
done < <(grep -oE '(href|src)="[^"]*"' "$dom" | sed -E 's/^(href|src)="(.*)"$/\2/' | sort -u)

images=$(grep -oE 'data-broken-images="[0-9]+"' "$dom" | grep -oE '[0-9]+' || true)
if [ -z "$images" ]; then
  echo "gallery-check: the page's load handler did not run (no data-broken-images on <body>)" >&2
  broken=$((broken + 1))
elif [ "$images" != 0 ]; then
  echo "gallery-check: $images images failed to load in chromium" >&2
  broken=$((broken + images))
fi

shot="$report_dir/gallery.png"
"$browser" "${flags[@]}" --screenshot="$shot" --window-size=1280,2000 "$url" >/dev/null 2>>"$profile/chromium.log" || true
[ -s "$shot" ] || { echo "gallery-check: no screenshot written" >&2; broken=$((broken + 1)); }

if [ "$broken" != 0 ]; then
  echo "gallery-check: $index: $broken problems ($checked links checked)" >&2
  exit 1
fi
echo "gallery-check: $index: $checked distinct relative links exist, no broken image in chromium; screenshot $shot"
