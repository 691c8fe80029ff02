// XXH3 from the maintained libxxhash (Debian's libxxhash-dev), linked, not inlined.
#include <xxhash.h>
