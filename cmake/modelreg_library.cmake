# modelreg_library(NAME <target> ALIAS <alias> SOURCES ... HEADERS_BASE <dir>)
#
# One library per top-level folder. The folder is the include root (headers
# live under <folder>/modelreg/...), headers are installed as a file set, the
# target joins the exported package, and CAF headers are precompiled once.
function(modelreg_library)
  cmake_parse_arguments(arg "" "NAME;ALIAS;EXPORT_NAME" "SOURCES" ${ARGN})
  add_library(${arg_NAME} ${arg_SOURCES})
  add_library(modelreg::${arg_ALIAS} ALIAS ${arg_NAME})
  set_target_properties(${arg_NAME} PROPERTIES EXPORT_NAME ${arg_ALIAS})
  file(GLOB_RECURSE _headers CONFIGURE_DEPENDS
       "${CMAKE_CURRENT_SOURCE_DIR}/modelreg/*.hpp")
  target_sources(${arg_NAME} PUBLIC FILE_SET HEADERS
                 BASE_DIRS "${CMAKE_CURRENT_SOURCE_DIR}" FILES ${_headers})
  target_precompile_headers(${arg_NAME} PRIVATE "${PROJECT_SOURCE_DIR}/cmake/caf_pch.hpp")
  install(TARGETS ${arg_NAME} EXPORT modelregTargets
          ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
          LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
          FILE_SET HEADERS DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
endfunction()
