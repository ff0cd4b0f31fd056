#!/usr/bin/env bash
# System side of `make setup`. The corpus generator needs no installed Debian package: eSpeak NG
# comes from the espeakng-loader wheel and FLAC from soundfile's bundled libsndfile. Its default
# text, Jane Austen's novels, is fetched with `apt-get download r-cran-janeaustenr` (no root, no R),
# which needs apt's package lists; this script makes sure they are there.
set -u
PKG=r-cran-janeaustenr
if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
  echo "setup: apt-get/dpkg-deb not found (not a Debian-like system): build the corpus from any"
  echo "       plain-text file instead: python scripts/make_corpus.py --text FILE"
  exit 0
fi
if apt-cache show "$PKG" >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  echo "setup: apt package lists lack $PKG; running apt-get update"
  apt-get update -qq || echo "setup: apt-get update failed; 'make data' will need --text FILE"
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  sudo apt-get update -qq || true
else
  echo "setup: apt's package lists do not know $PKG and this user is not root."
  echo "       Fix: run 'sudo apt-get update' once, or build the corpus from any plain-text file:"
  echo "       python scripts/make_corpus.py --text FILE"
fi
exit 0
