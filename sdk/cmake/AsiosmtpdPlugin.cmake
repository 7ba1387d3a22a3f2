# SPDX-License-Identifier: Apache-2.0
# asiosmtpd_add_plugin(<name> SOURCES ... [LIBRARIES ...] [OUTPUT_DIRECTORY dir] [INSTALL])
#
# Builds <name>.so as a MODULE against asiosmtpd::sdk only: hidden visibility, a version
# script exporting nothing but the entry symbol (hidden visibility alone still exports
# std:: template instances and makes the library impossible to unload), -fno-gnu-unique for
# C++ (GNU unique symbols would mark the library NODELETE), and --no-undefined (a plugin
# reaches the host only through its function table). Used in-tree for the bundled plugins
# and installed with the SDK (find_package(asiosmtpd-sdk)) for out-of-tree plugins.
# INSTALL: install(TARGETS) into the folder where the installed server finds plugins by
# name, <libdir>/asiosmtpd/plugins (relative to the install prefix).
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
    include(GNUInstallDirs)
    install(TARGETS ${name} LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}/asiosmtpd/plugins)
  endif()
endfunction()
