// Generates java_hash_vectors.txt, the iteration orders java_hash.rs is checked against:
//   javac -d /tmp/jho JavaHashOrder.java && java -cp /tmp/jho JavaHashOrder > java_hash_vectors.txt
// Each case: the keys in the order they are put (d:<double> | s:<string> | g:<hashCode>, a
// non-Comparable key of that hash, like DirkDB's GroupKey), then the HashMap's iteration order,
// then the order of a HashSet rebuilt by adding the members in that iteration order, and once
// more (DirkDB's Jackson round trip of a TANISA: written as iterated, read back by add()).
// A case is all non-Comparable keys (as DirkDB's group maps) or Doubles and Strings (as a
// TANISA). Keys are chosen so that many share the low bits of their spread hash: bins of nine and more
// become trees (tables of 64 and more) or make the table double.
import java.util.*;

public class JavaHashOrder {
    static final class GroupKey {
        final int h;
        GroupKey(int h) { this.h = h; }
        @Override public int hashCode() { return h; }
        @Override public String toString() { return "g:" + h; }
    }

    static int spread(int h) { return h ^ (h >>> 16); }

    static String enc(Object o) {
        if (o instanceof Double d) return "d:" + Double.doubleToRawLongBits(d);
        if (o instanceof String s) return "s:" + s;
        return o.toString();
    }

    static List<Integer> order(List<Object> put, Collection<Object> it) {
        List<Integer> out = new ArrayList<>();
        for (Object o : it) out.add(put.indexOf(o));
        return out;
    }

    public static void main(String[] args) {
        Random r = new Random(11);
        String letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        for (int c = 0; c < 400; c++) {
            int mask = new int[] {15, 63, 127, 255}[r.nextInt(4)];
            int target = r.nextInt(mask + 1);
            int n = 1 + r.nextInt(c < 200 ? 40 : 120);
            double collide = r.nextDouble();
            boolean opaque = c % 3 == 0;
            LinkedHashSet<Object> keys = new LinkedHashSet<>();
            Set<Integer> hashes = new HashSet<>();
            int tries = 0;
            while (keys.size() < n && tries++ < 2_000_000) {
                Object k;
                int kind = opaque ? 2 : r.nextInt(2);
                if (kind == 0) {
                    int len = 1 + r.nextInt(6);
                    StringBuilder sb = new StringBuilder();
                    for (int i = 0; i < len; i++) sb.append(letters.charAt(r.nextInt(letters.length())));
                    k = sb.toString();
                } else if (kind == 1) {
                    k = r.nextBoolean() ? (double) r.nextInt(5000) : r.nextInt(100000) / 100.0;
                } else {
                    k = new GroupKey(r.nextInt());
                }
                boolean wantCollision = r.nextDouble() < collide;
                if (wantCollision && (spread(k.hashCode()) & mask) != target) continue;
                // Non-comparable keys of one hash are ordered by identity in Java: avoided.
                if (k instanceof GroupKey && !hashes.add(k.hashCode())) continue;
                keys.add(k);
            }
            List<Object> put = new ArrayList<>(keys);
            HashSet<Object> s0 = new HashSet<>();
            for (Object k : put) s0.add(k);
            HashSet<Object> s1 = new HashSet<>();
            for (Object k : s0) s1.add(k);
            HashSet<Object> s2 = new HashSet<>();
            for (Object k : s1) s2.add(k);
            StringBuilder line = new StringBuilder();
            for (Object k : put) line.append(enc(k)).append('\t');
            System.out.println(line.toString().trim());
            System.out.println(order(put, s0).toString().replaceAll("[\\[\\] ]", ""));
            System.out.println(order(put, s1).toString().replaceAll("[\\[\\] ]", ""));
            System.out.println(order(put, s2).toString().replaceAll("[\\[\\] ]", ""));
        }
    }
}
