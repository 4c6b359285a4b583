# CMake package file of an installed autopipeline (scripts/install.sh puts it in
# <prefix>/lib/cmake/autopipeline/). Relocatable: every path is found from this file's own location.
#
#   find_package(autopipeline 0.1 REQUIRED)
#   target_link_libraries(app PRIVATE autopipeline::autopipeline)          # shared library
#   target_link_libraries(app PRIVATE autopipeline::autopipeline_static)   # or the static one
#
# Both targets carry the include directory with autopipeline.h (C) and autopipeline.hpp (C++17).

include_guard(GLOBAL)
include(CMakeFindDependencyMacro)
find_dependency(Threads)

get_filename_component(_ap_prefix "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)
set(autopipeline_INCLUDE_DIR "${_ap_prefix}/include")

if(NOT TARGET autopipeline::autopipeline)
  add_library(autopipeline::autopipeline SHARED IMPORTED)
  set_target_properties(autopipeline::autopipeline PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${autopipeline_INCLUDE_DIR}")
  if(WIN32)
    # Rust's cdylib on Windows: autopipeline.dll plus its import library autopipeline.dll.lib.
    set_target_properties(autopipeline::autopipeline PROPERTIES
      IMPORTED_LOCATION "${_ap_prefix}/bin/autopipeline.dll"
      IMPORTED_IMPLIB "${_ap_prefix}/lib/autopipeline.dll.lib")
  else()
    set(_ap_shared "${_ap_prefix}/lib/${CMAKE_SHARED_LIBRARY_PREFIX}autopipeline${CMAKE_SHARED_LIBRARY_SUFFIX}")
    set_target_properties(autopipeline::autopipeline PROPERTIES IMPORTED_LOCATION "${_ap_shared}")
    if(NOT IS_SYMLINK "${_ap_shared}")
      # Installed without a soname (no patchelf at install time): link by name, not by path.
      set_target_properties(autopipeline::autopipeline PROPERTIES IMPORTED_NO_SONAME TRUE)
    endif()
  endif()
endif()

if(NOT TARGET autopipeline::autopipeline_static)
  add_library(autopipeline::autopipeline_static STATIC IMPORTED)
  if(WIN32)
    set(_ap_static "${_ap_prefix}/lib/autopipeline.lib")
    set(_ap_system_libs ws2_32 userenv ntdll bcrypt advapi32 kernel32)
  else()
    set(_ap_static "${_ap_prefix}/lib/libautopipeline.a")
    # What the Rust standard library needs (`rustc --print native-static-libs`).
    set(_ap_system_libs Threads::Threads ${CMAKE_DL_LIBS})
    if(APPLE)
      list(APPEND _ap_system_libs "-framework CoreFoundation" "-framework Security" iconv)
    else()
      list(APPEND _ap_system_libs m rt util gcc_s)
    endif()
  endif()
  set_target_properties(autopipeline::autopipeline_static PROPERTIES
    IMPORTED_LOCATION "${_ap_static}"
    INTERFACE_INCLUDE_DIRECTORIES "${autopipeline_INCLUDE_DIR}"
    INTERFACE_LINK_LIBRARIES "${_ap_system_libs}")
endif()

set(autopipeline_LIBRARIES autopipeline::autopipeline)
set(autopipeline_FOUND TRUE)
unset(_ap_shared)
unset(_ap_static)
unset(_ap_system_libs)
unset(_ap_prefix)
