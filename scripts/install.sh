#!/bin/sh
# Installs a built autopipeline into PREFIX (it never builds: run `cargo build --release` first).
#
#   scripts/install.sh [--profile release|debug|NAME] [--libdir DIR] [--destdir DIR] [--no-static] PREFIX
#
#   --profile   cargo profile whose output to install (target/<profile>; default release)
#   --libdir    folder holding the built libautopipeline.so/.dylib/.a (overrides --profile)
#   --destdir   staging root for packagers: files go to DESTDIR/PREFIX, paths inside them say PREFIX
#   --no-static skip libautopipeline.a
#
# Layout (Linux; macOS uses .dylib names and install_name instead of soname):
#   PREFIX/include/autopipeline.h, autopipeline.hpp
#   PREFIX/lib/libautopipeline.so.X.Y.Z      the library, soname libautopipeline.so.ABI
#   PREFIX/lib/libautopipeline.so.ABI -> libautopipeline.so.X.Y.Z
#   PREFIX/lib/libautopipeline.so -> libautopipeline.so.ABI
#   PREFIX/lib/libautopipeline.a
#   PREFIX/lib/pkgconfig/autopipeline.pc
#   PREFIX/lib/cmake/autopipeline/autopipeline-config.cmake, autopipeline-config-version.cmake
#   PREFIX/share/autopipeline/bindings/{cpp,csharp,python}/
#
# ABI = MAJOR, or 0.MINOR while MAJOR is 0 (as Cargo's semver: 0.1 and 0.2 are incompatible).
# The soname is set here with patchelf (macOS: install_name_tool) rather than by the build, so that
# programs linked against target/<profile> keep finding libautopipeline.so there.
set -eu

die() { echo "install.sh: $*" >&2; exit 1; }

root=$(cd "$(dirname "$0")/.." && pwd)
profile=release
libdir=
destdir=
static=1
prefix=
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) [ $# -ge 2 ] || die "--profile needs a value"; profile=$2; shift 2 ;;
    --libdir) [ $# -ge 2 ] || die "--libdir needs a value"; libdir=$2; shift 2 ;;
    --destdir) [ $# -ge 2 ] || die "--destdir needs a value"; destdir=$2; shift 2 ;;
    --no-static) static=0; shift ;;
    -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [ -z "$prefix" ] || die "more than one PREFIX"; prefix=$1; shift ;;
  esac
done
[ -n "$prefix" ] || die "usage: install.sh [--profile P] [--libdir DIR] [--destdir DIR] [--no-static] PREFIX"
case "$prefix" in /*) ;; *) prefix=$(pwd)/$prefix ;; esac
[ -n "$libdir" ] || libdir=$root/target/$profile

# The version of the library is the crate's; the header must agree (it is generated from it).
version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$root/Cargo.toml" | head -n 1)
header_version=$(sed -n 's/^#define AUTOPIPELINE_VERSION "\(.*\)"/\1/p' "$root/include/autopipeline.h")
[ -n "$version" ] || die "no version in Cargo.toml"
[ "$version" = "$header_version" ] || die "Cargo.toml says $version but include/autopipeline.h says $header_version"
major=${version%%.*}
rest=${version#*.}
minor=${rest%%.*}
if [ "$major" = 0 ]; then abi=0.$minor; else abi=$major; fi

case "$(uname -s)" in
  Darwin)
    built=$libdir/libautopipeline.dylib
    real=libautopipeline.$version.dylib
    soname=libautopipeline.$abi.dylib
    devlink=libautopipeline.dylib
    libs_private="-framework CoreFoundation -framework Security -liconv -lpthread -lm -ldl"
    ;;
  *)
    built=$libdir/libautopipeline.so
    real=libautopipeline.so.$version
    soname=libautopipeline.so.$abi
    devlink=libautopipeline.so
    libs_private="-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc"
    ;;
esac
[ -f "$built" ] || die "$built not found: build it first (cargo build --profile $profile) or pass --libdir"
[ $static = 0 ] || [ -f "$libdir/libautopipeline.a" ] || die "$libdir/libautopipeline.a not found (or pass --no-static)"

dest=$destdir$prefix
mkdir -p "$dest/include" "$dest/lib/pkgconfig" "$dest/lib/cmake/autopipeline" \
  "$dest/share/autopipeline/bindings/cpp" "$dest/share/autopipeline/bindings/csharp" \
  "$dest/share/autopipeline/bindings/python"

# Headers.
install -m 644 "$root/include/autopipeline.h" "$root/bindings/cpp/autopipeline.hpp" "$dest/include/"

# Shared library with its soname and the two symlinks.
rm -f "$dest/lib/$real" "$dest/lib/$soname" "$dest/lib/$devlink"
install -m 755 "$built" "$dest/lib/$real"
case "$(uname -s)" in
  Darwin)
    install_name_tool -id "@rpath/$soname" "$dest/lib/$real"
    ln -s "$real" "$dest/lib/$soname"
    ln -s "$soname" "$dest/lib/$devlink"
    ;;
  *)
    if command -v patchelf >/dev/null 2>&1; then
      patchelf --set-soname "$soname" "$dest/lib/$real"
      ln -s "$real" "$dest/lib/$soname"
      ln -s "$soname" "$dest/lib/$devlink"
    else
      # Without a soname, programs record "libautopipeline.so" itself: install just that name.
      echo "install.sh: warning: patchelf not found, installing without a soname (apt-get install patchelf)" >&2
      mv "$dest/lib/$real" "$dest/lib/$devlink"
    fi
    ;;
esac
if [ $static = 1 ]; then
  install -m 644 "$libdir/libautopipeline.a" "$dest/lib/libautopipeline.a"
fi

# pkg-config and CMake package files.
sed -e "s|@PREFIX@|$prefix|g" -e "s|@VERSION@|$version|g" -e "s|@LIBS_PRIVATE@|$libs_private|g" \
  "$root/cmake/autopipeline.pc.in" > "$dest/lib/pkgconfig/autopipeline.pc"
chmod 644 "$dest/lib/pkgconfig/autopipeline.pc"
install -m 644 "$root/cmake/autopipeline-config.cmake" "$root/cmake/autopipeline-config-version.cmake" \
  "$dest/lib/cmake/autopipeline/"

# Bindings for other languages (sources; they load the library at run time).
install -m 644 "$root/bindings/cpp/autopipeline.hpp" "$dest/share/autopipeline/bindings/cpp/"
install -m 644 "$root"/bindings/csharp/*.cs "$root/bindings/csharp/README.md" "$dest/share/autopipeline/bindings/csharp/"
if [ -f "$root/bindings/python/autopipeline.py" ]; then
  install -m 644 "$root/bindings/python/autopipeline.py" "$dest/share/autopipeline/bindings/python/"
fi

echo "installed autopipeline $version (ABI $abi) into $dest"
