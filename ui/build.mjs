// Assembles ui/dist, the files the app serves: our static files plus the pinned third-party builds from
// node_modules (htmx, marked, DOMPurify, highlight.js). Nothing third-party is committed; `npm ci` + this
// script make dist/.
import { cpSync, mkdirSync, rmSync, existsSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
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

// highlight.js: its core as a classic script (the package ships it as CommonJS with no imports: wrapped, it
// sets `window.hljs`), every language as the ES module the package ships (loaded by app.js the first time a
// code block names it), the map from each language name and alias to its module, and two themes.
const hljsDir = join(here, "node_modules/highlight.js");
if (!existsSync(hljsDir)) {
  console.error("missing node_modules/highlight.js: run `npm ci` in ui/ first");
  process.exit(1);
}
const hljsOut = join(dist, "vendor", "highlight");
mkdirSync(join(hljsOut, "languages"), { recursive: true });
const core = readFileSync(join(hljsDir, "lib/core.js"), "utf8");
writeFileSync(
  join(hljsOut, "core.js"),
  `/* highlight.js ${JSON.parse(readFileSync(join(hljsDir, "package.json"), "utf8")).version} (BSD-3-Clause), lib/core.js wrapped by ui/build.mjs */\n` +
    `(function () {\nconst module = { exports: {} }; const exports = module.exports;\n${core}\nwindow.hljs = module.exports;\n})();\n`,
);
// `es/languages/NAME.js` are self-contained modules; the `NAME.js.js` beside them re-export CommonJS.
const languageFiles = readdirSync(join(hljsDir, "es/languages")).filter((f) => /^[\w-]+\.js$/.test(f));
for (const f of languageFiles) cpSync(join(hljsDir, "es/languages", f), join(hljsOut, "languages", f));
const hljs = createRequire(import.meta.url)(hljsDir);
const aliases = {};
for (const name of hljs.listLanguages()) {
  if (!languageFiles.includes(`${name}.js`)) continue;
  for (const alias of [name, ...(hljs.getLanguage(name).aliases || [])]) aliases[alias.toLowerCase()] ??= name;
}
writeFileSync(join(hljsOut, "aliases.json"), JSON.stringify(aliases));
for (const theme of ["github", "github-dark"]) {
  cpSync(join(hljsDir, "styles", `${theme}.min.css`), join(hljsOut, `${theme}.min.css`));
}

cpSync(join(here, "static"), join(dist, "static"), { recursive: true });
cpSync(join(here, "..", "icons", "icon.svg"), join(dist, "static", "icon.svg"));
// Tauri wants an index page in frontendDist; the app itself is served by our `app://` protocol.
cpSync(join(here, "static", "index.html"), join(dist, "index.html"));
console.log(
  `ui/dist ready (${Object.keys(vendor).length} vendor files, highlight.js with ${languageFiles.length} languages)`,
);
