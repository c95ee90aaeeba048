/* The C API from an installed copy: connect to a gpio device and read its IDs. */
#include <stdio.h>

#include <vfu/vfu.h>

int main(int argc, char **argv) {
  if (argc != 2) return 2;
  vfub_client *c = vfub_client_connect(argv[1], NULL);
  if (!c) return printf("c_probe: %s\n", vfub_last_error()), 1;
  uint32_t regions = 0;
  uint16_t ids[2] = {0, 0};
  if (vfub_client_probe(c, &regions, NULL) || vfub_client_read(c, VFUB_REGION_CONFIG, 0, ids, 4))
    return printf("c_probe: %s\n", vfub_client_last_error(c)), 1;
  printf("c_probe: %04x:%04x, %u regions\n", ids[0], ids[1], regions);
  vfub_client_close(c);
  return ids[0] == 0x494f ? 0 : 1;
}
