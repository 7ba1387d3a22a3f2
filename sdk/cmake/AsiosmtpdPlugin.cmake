# asiosmtpd_add_plugin(<name> SOURCES ... [LIBRARIES ...] [OUTPUT_DIRECTORY dir])
# Builds <name>.so as a MODULE against asiosmtpd::sdk only: hidden visibility, a version
# script exporting nothing but the entry symbol (hidden visibility alone still exports
# std:: template instances and makes the library impossible to unload), -fno-gnu-unique.
function(asiosmtpd_add_plugin name)
  cmake_parse_arguments(arg "" "OUTPUT_DIRECTORY" "SOURCES;LIBRARIES" ${ARGN})
  add_library(${name} MODULE ${arg_SOURCES})
  target_link_libraries(${name} PRIVATE asiosmtpd::sdk ${arg_LIBRARIES})
  set_target_properties(${name} PROPERTIES PREFIX "" OUTPUT_NAME ${name}
    C_VISIBILITY_PRESET hidden CXX_VISIBILITY_PRESET hidden VISIBILITY_INLINES_HIDDEN ON)
  if(arg_OUTPUT_DIRECTORY)
    set_target_properties(${name} PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${arg_OUTPUT_DIRECTORY})
  endif()
  target_compile_options(${name} PRIVATE $<$<CXX_COMPILER_ID:GNU>:-fno-gnu-unique>)
  target_link_options(${name} PRIVATE
    "LINKER:--version-script=${CMAKE_CURRENT_FUNCTION_LIST_DIR}/plugin.map")
  # Plugins reach the host only through its function table. Sanitized builds leave the
  # sanitizer runtime to the executable, so --no-undefined is off there.
  get_property(_san CACHE ASIOSMTPD_SANITIZE PROPERTY VALUE)
  if(NOT _san)
    target_link_options(${name} PRIVATE "LINKER:--no-undefined")
  endif()
endfunction()
