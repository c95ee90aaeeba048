# install.cmake: what `cmake --install` puts where, the CMake package (find_package(vfu_broker)),
# the pkg-config file of the C API, and the .deb (cpack). docs/embedding.md shows their use.
include(CMakePackageConfigHelpers)

# The public headers (VFU_PUBLIC_HEADERS, CMakeLists.txt) under include/vfu/ as in the
# source tree (they include one another as "actors/types.hpp"), and the C API's vfu/vfu.h.
foreach(h IN LISTS VFU_PUBLIC_HEADERS)
  get_filename_component(d "${h}" DIRECTORY)
  install(FILES "${PROJECT_SOURCE_DIR}/${h}" DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}/vfu/${d}" COMPONENT dev)
endforeach()
install(FILES "${PROJECT_SOURCE_DIR}/include/vfu/vfu.h" DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}/vfu" COMPONENT dev)

install(TARGETS vfu_protocol vfu_actors vfu_device vfu_c EXPORT vfu_brokerTargets
        LIBRARY DESTINATION "${CMAKE_INSTALL_LIBDIR}" NAMELINK_COMPONENT dev
        ARCHIVE DESTINATION "${CMAKE_INSTALL_LIBDIR}" COMPONENT dev)
set(_tools vfu-serve vfu-probe vfu-decode vfu-harness vfu-trace vfu-migrate vfu-bench vfu-demo)
set_target_properties(${_tools} PROPERTIES INSTALL_RPATH "$ORIGIN/../${CMAKE_INSTALL_LIBDIR}")
install(TARGETS ${_tools} RUNTIME DESTINATION "${CMAKE_INSTALL_BINDIR}")
foreach(t IN LISTS _tools)
  install(FILES "${PROJECT_SOURCE_DIR}/docs/man/${t}.1" DESTINATION "${CMAKE_INSTALL_MANDIR}/man1")
endforeach()

set(_cmakedir "${CMAKE_INSTALL_LIBDIR}/cmake/vfu_broker")
install(EXPORT vfu_brokerTargets NAMESPACE vfu:: DESTINATION "${_cmakedir}" COMPONENT dev)
configure_package_config_file("${PROJECT_SOURCE_DIR}/cmake/vfu_brokerConfig.cmake.in"
                              "${PROJECT_BINARY_DIR}/vfu_brokerConfig.cmake" INSTALL_DESTINATION "${_cmakedir}")
# 0.x: a minor version may change the API.
write_basic_package_version_file("${PROJECT_BINARY_DIR}/vfu_brokerConfigVersion.cmake"
                                 COMPATIBILITY SameMinorVersion)
install(FILES "${PROJECT_BINARY_DIR}/vfu_brokerConfig.cmake" "${PROJECT_BINARY_DIR}/vfu_brokerConfigVersion.cmake"
              "${PROJECT_SOURCE_DIR}/cmake/FindCAF.cmake" DESTINATION "${_cmakedir}" COMPONENT dev)

# pkg-config, relocatable: the prefix is found from the .pc file's own place.
file(RELATIVE_PATH _pc_up "/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/")
configure_file("${PROJECT_SOURCE_DIR}/cmake/vfu.pc.in" "${PROJECT_BINARY_DIR}/vfu.pc" @ONLY)
install(FILES "${PROJECT_BINARY_DIR}/vfu.pc" DESTINATION "${CMAKE_INSTALL_LIBDIR}/pkgconfig" COMPONENT dev)

# cpack -G DEB: one package with the libraries, headers, tools and man pages, depending on
# the Debian packages we build with (the C++ headers need CAF's and Boost's).
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME vfu-broker)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "vfu-broker developers <vfu-broker@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "vfio-user in both roles: C++ actor broker, C API, devices and tools")
set(CPACK_DEBIAN_PACKAGE_DEPENDS "libcaf-core0.17 (>= 0.17.6), libc6 (>= 2.36), libstdc++6 (>= 12)")
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS "libcaf-dev, libboost-dev")
set(CPACK_DEBIAN_PACKAGE_SECTION devel)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
include(CPack)
