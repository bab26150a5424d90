import com.github.benmanes.caffeine.cache.Cache;
import com.github.benmanes.caffeine.cache.Caffeine;
import java.io.BufferedReader;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.Arrays;

/**
 * Replays traces through the real Caffeine, to check the simulator's `wtinylfu` against it and
 * to set larder beside it. Each argument is a file from `simulate --keys-out`: the sizes on
 * the first line, then one key per line. A read that misses inserts the key (cache-aside, as
 * the simulator replays), and the cache's maintenance runs after every access, so the replay
 * is as exact as the simulator's own policies. Prints the simulator's table rows.
 */
public final class Replay {
  public static void main(String[] args) throws Exception {
    for (String arg : args) {
      Path path = Paths.get(arg);
      String name = path.getFileName().toString().replaceFirst("\\.keys$", "");
      int[] sizes;
      long[] keys;
      try (BufferedReader reader = Files.newBufferedReader(path)) {
        sizes = Arrays.stream(reader.readLine().split(",")).mapToInt(Integer::parseInt).toArray();
        keys = reader.lines().mapToLong(Long::parseUnsignedLong).toArray();
      }
      for (int size : sizes) {
        double[] ratios = new double[RUNS];
        for (int run = 0; run < RUNS; run++) {
          ratios[run] = 100.0 * replay(keys, size) / keys.length;
        }
        double mean = Arrays.stream(ratios).average().orElse(0);
        System.out.printf("| %s | %d | caffeine | %.2f | mean of %d runs, %.2f–%.2f |%n", name, size,
            mean, RUNS, Arrays.stream(ratios).min().orElse(0), Arrays.stream(ratios).max().orElse(0));
      }
    }
  }

  /** Caffeine seeds its sketch at random, so rows are the mean of this many replays. */
  static final int RUNS = Integer.getInteger("runs", 4);

  /** Hits of one replay of `keys` through a new cache of `size` entries. */
  static long replay(long[] keys, int size) {
    Cache<Long, Long> cache =
        Caffeine.newBuilder().maximumSize(size).executor(Runnable::run).build();
    long hits = 0;
    for (long key : keys) {
      if (cache.getIfPresent(key) != null) {
        hits++;
      } else {
        cache.put(key, key);
      }
      cache.cleanUp();
    }
    return hits;
  }
}
