// Assembles ui/dist, the files the app serves: our static files plus the pinned third-party builds from
// node_modules (htmx, marked, DOMPurify). Nothing third-party is committed; `npm ci` + this script make dist/.
import { cpSync, mkdirSync, rmSync, existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, "dist");
const vendor = {
  "htmx.min.js": "node_modules/htmx.org/dist/htmx.min.js",
  "marked.umd.js": "node_modules/marked/lib/marked.umd.js",
  "purify.min.js": "node_modules/dompurify/dist/purify.min.js",
};

rmSync(dist, { recursive: true, force: true });
mkdirSync(join(dist, "vendor"), { recursive: true });
for (const [name, from] of Object.entries(vendor)) {
  const src = join(here, from);
  if (!existsSync(src)) {
    console.error(`missing ${from}: run \`npm ci\` in ui/ first`);
    process.exit(1);
  }
  cpSync(src, join(dist, "vendor", name));
}
cpSync(join(here, "static"), join(dist, "static"), { recursive: true });
cpSync(join(here, "..", "icons", "icon.svg"), join(dist, "static", "icon.svg"));
// Tauri wants an index page in frontendDist; the app itself is served by our `app://` protocol.
cpSync(join(here, "static", "index.html"), join(dist, "index.html"));
console.log(`ui/dist ready (${Object.keys(vendor).length} vendor files)`);
