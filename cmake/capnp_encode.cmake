# cmake -DCAPNP=... -DINCLUDE=... -DSCHEMA=... -DTYPE=... -DIN=text -DOUT=binary -P capnp_encode.cmake
# Encodes a Cap'n Proto text message into its binary form (fuzz seeds).
execute_process(COMMAND "${CAPNP}" encode -I "${INCLUDE}" "${SCHEMA}" "${TYPE}"
                INPUT_FILE "${IN}" OUTPUT_FILE "${OUT}" RESULT_VARIABLE result)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "capnp encode failed for ${IN}")
endif()
