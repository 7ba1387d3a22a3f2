# SPDX-License-Identifier: Apache-2.0
# asiosmtpd_add_plugin(<name> SOURCES ... [LIBRARIES ...] [OUTPUT_DIRECTORY dir] [INSTALL])
#
# Builds <name>.so as a MODULE against asiosmtpd::sdk only: hidden visibility, a version
# script exporting nothing but the entry symbol (hidden visibility alone still exports
# std:: template instances and makes the library impossible to unload), -fno-gnu-unique for
# C++ (GNU unique symbols would mark the library NODELETE), and --no-undefined (a plugin
# reaches the host only through its function table). Used in-tree for the bundled plugins
# and installed with the SDK (find_package(asiosmtpd-sdk)) for out-of-tree plugins.
# INSTALL: install(TARGETS) into the folder where a server installed in the same prefix finds
# plugins by name: <prefix>/lib/asiosmtpd/plugins, the server's own layout as the installed
# SDK records it (ASIOSMTPD_PLUGIN_INSTALL_SUBDIR), not this project's CMAKE_INSTALL_LIBDIR
# (which is lib/<multiarch> for prefix /usr on Debian, where the server does not look).
function(asiosmtpd_add_plugin name)
  cmake_parse_arguments(arg "INSTALL" "OUTPUT_DIRECTORY" "SOURCES;LIBRARIES" ${ARGN})
  add_library(${name} MODULE ${arg_SOURCES})
  target_link_libraries(${name} PRIVATE asiosmtpd::sdk ${arg_LIBRARIES})
  set_target_properties(${name} PROPERTIES PREFIX "" OUTPUT_NAME ${name}
    C_VISIBILITY_PRESET hidden CXX_VISIBILITY_PRESET hidden VISIBILITY_INLINES_HIDDEN ON)
  if(arg_OUTPUT_DIRECTORY)
    set_target_properties(${name} PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${arg_OUTPUT_DIRECTORY})
  endif()
  target_compile_options(${name} PRIVATE $<$<COMPILE_LANG_AND_ID:CXX,GNU>:-fno-gnu-unique>)
  target_link_options(${name} PRIVATE
    "LINKER:--version-script=${CMAKE_CURRENT_FUNCTION_LIST_DIR}/plugin.map")
  # Sanitized builds (asiosmtpd's own asan/tsan presets) leave the sanitizer runtime to the
  # executable, so --no-undefined is off there.
  get_property(_san CACHE ASIOSMTPD_SANITIZE PROPERTY VALUE)
  if(NOT _san)
    target_link_options(${name} PRIVATE "LINKER:--no-undefined")
  endif()
  if(arg_INSTALL)
    if(DEFINED ASIOSMTPD_PLUGIN_INSTALL_SUBDIR)
      set(_dest ${ASIOSMTPD_PLUGIN_INSTALL_SUBDIR})
    else()
      include(GNUInstallDirs)
      set(_dest ${CMAKE_INSTALL_LIBDIR}/asiosmtpd/plugins)
    endif()
    install(TARGETS ${name} LIBRARY DESTINATION ${_dest})
  endif()
endfunction()
