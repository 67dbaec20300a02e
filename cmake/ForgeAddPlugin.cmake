# forge_add_plugin(<kind> <name>
#                  SOURCES <files...>
#                  [VERSION <x.y.z>]            plugin version (default 0.1.0)
#                  [LINK_LIBRARIES <libs...>]   extra libraries (never a second LibTorch)
#                  [OUTPUT_DIRECTORY <dir>]     where the .so is written
#                  [NO_INSTALL])
#
# Builds libforge_<kind>_<name>.so, the plugin that registers <kind>/<name>
# and is chosen in TOML by `type = "<name>"` ([adapter], [vision_encoder]) or
# `arch = "<name>"` ([vlm]). It applies the plugin boundary rules
# (docs/abi.md): hidden visibility, --no-undefined, one exported symbol
# (forge_plugin_v<ABI>), and LibTorch/forge_core/spdlog linked dynamically so
# the process holds one copy of each. The source calls FORGE_PLUGIN(...) from
# <forge/plugin.h>; kind, name and version reach it as compile definitions.

set(_FORGE_PLUGIN_MAP "${CMAKE_CURRENT_LIST_DIR}/forge_plugin.map")

function(forge_add_plugin kind name)
  cmake_parse_arguments(P "NO_INSTALL;ALLOW_UNDEFINED" "VERSION;OUTPUT_DIRECTORY"
                        "SOURCES;LINK_LIBRARIES" ${ARGN})
  if(NOT kind MATCHES "^(arch|adapter|encoder)$")
    message(FATAL_ERROR "forge_add_plugin: kind '${kind}' is not one of arch, adapter, encoder")
  endif()
  if(NOT name MATCHES "^[a-z][a-z0-9_]*$")
    message(FATAL_ERROR "forge_add_plugin: name '${name}' must match [a-z][a-z0-9_]*")
  endif()
  if(NOT P_SOURCES)
    message(FATAL_ERROR "forge_add_plugin(${kind} ${name}): SOURCES is required")
  endif()
  if(NOT P_VERSION)
    set(P_VERSION 0.1.0)
  endif()
  if(NOT P_OUTPUT_DIRECTORY)
    if(DEFINED FORGE_PLUGIN_OUTPUT_DIR)
      set(P_OUTPUT_DIRECTORY "${FORGE_PLUGIN_OUTPUT_DIR}")
    else()
      set(P_OUTPUT_DIRECTORY "${CMAKE_CURRENT_BINARY_DIR}")
    endif()
  endif()

  set(target forge_${kind}_${name})
  add_library(${target} MODULE ${P_SOURCES})
  set_target_properties(${target} PROPERTIES
    PREFIX "lib"
    OUTPUT_NAME "forge_${kind}_${name}"
    LIBRARY_OUTPUT_DIRECTORY "${P_OUTPUT_DIRECTORY}"
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON
    POSITION_INDEPENDENT_CODE ON
    CUDA_RUNTIME_LIBRARY Shared
    INSTALL_RPATH "$ORIGIN/../..")  # <prefix>/lib/forge/plugins -> <prefix>/lib
  target_compile_features(${target} PRIVATE cxx_std_20)
  target_compile_definitions(${target} PRIVATE
    FORGE_PLUGIN_KIND="${kind}" FORGE_PLUGIN_NAME="${name}" FORGE_PLUGIN_VERSION="${P_VERSION}")
  target_link_libraries(${target} PRIVATE Forge::sdk ${P_LINK_LIBRARIES})
  target_link_options(${target} PRIVATE "LINKER:--version-script=${_FORGE_PLUGIN_MAP}")
  set_property(TARGET ${target} APPEND PROPERTY LINK_DEPENDS "${_FORGE_PLUGIN_MAP}")  # a new ABI relinks
  # ALLOW_UNDEFINED exists only for forge's own loader tests; a sanitized forge
  # build (FORGE_SANITIZED) leaves the sanitizer runtime to the executable.
  if(NOT P_ALLOW_UNDEFINED AND NOT FORGE_SANITIZED)
    target_link_options(${target} PRIVATE "LINKER:--no-undefined")
  endif()
  set_property(GLOBAL APPEND PROPERTY FORGE_PLUGIN_TARGETS ${target})
  if(TARGET forge_pch)  # in-tree builds share one precompiled LibTorch header
    target_precompile_headers(${target} REUSE_FROM forge_pch)
  endif()
  if(NOT P_NO_INSTALL)
    if(DEFINED FORGE_PLUGIN_INSTALL_DIR)
      set(_dest "${FORGE_PLUGIN_INSTALL_DIR}")
    else()
      set(_dest "lib/forge/plugins")
    endif()
    install(TARGETS ${target} LIBRARY DESTINATION "${_dest}")
  endif()
endfunction()
