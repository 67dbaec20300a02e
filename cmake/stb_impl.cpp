// stb_image and stb_image_write compiled inside forge, for sanitized and fuzz
// builds only (cmake/ForgeDependencies.cmake); other builds link Debian's libstb.
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image.h>
#include <stb_image_write.h>
