# ASIOSMTPD_SANITIZE applies to everything built in this tree, plugins included, so that a
# plugin loaded into a sanitized host is sanitized too.
if(ASIOSMTPD_SANITIZE)
  add_compile_options(-fsanitize=${ASIOSMTPD_SANITIZE} -fno-omit-frame-pointer -fno-sanitize-recover=all)
  add_link_options(-fsanitize=${ASIOSMTPD_SANITIZE})
endif()
