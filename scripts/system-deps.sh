#!/usr/bin/env bash
# System libraries for the optional extras: open3d (points) needs libusb-1.0 to import.
# Idempotent; does nothing when the library is present; never fails the caller (without
# root/apt the points code falls back to its numpy readers and says how to fix open3d).
if ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get install -y -qq libusb-1.0-0 >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq libusb-1.0-0 >/dev/null 2>&1; } ||
    echo "system-deps: could not install libusb-1.0-0; open3d will not import" >&2
else
  echo "system-deps: libusb-1.0-0 missing; run 'sudo apt-get install libusb-1.0-0' for open3d" >&2
fi
exit 0
