import { openSqliteStore } from "./sqlite_store.ts";
import { runStoreSuite } from "../../tests/helpers/store_suite.ts";

runStoreSuite("SQLite store", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/runs.db`;
  const store = openSqliteStore(path);
  return {
    store,
    location: `sqlite:${path}`,
    cleanup: async () => {
      store.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
});
