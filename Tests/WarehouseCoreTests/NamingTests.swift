import Testing
import WarehouseCore

/// The naming rules of docs/design.md and how paths become keys (docs/format.md "Keys").
@Suite struct NamingTests {
    @Test func namespaceNamesFollowTheDesign() {
        #expect(BlockName.isValidNamespace("llama-3.1-8b@tp0+bf16_x"))
        #expect(!BlockName.isValidNamespace(".hidden"))
        #expect(!BlockName.isValidNamespace("has space"))
        #expect(!BlockName.isValidNamespace(""))
        #expect(!BlockName.isValidNamespace(String(repeating: "a", count: 129)))
        #expect(BlockName.isValidNamespace(String(repeating: "a", count: 128)))
    }

    @Test func canonicalHashesAreSixteenToOneHundredTwentyEightLowercaseHexDigits() {
        #expect(BlockName.isCanonicalHash(Array("0123456789abcdef".utf8)))
        #expect(!BlockName.isCanonicalHash(Array("0123456789ABCDEF".utf8)))
        #expect(!BlockName.isCanonicalHash(Array("0123456789abcde".utf8)))
        #expect(BlockName.isCanonicalHash([UInt8](repeating: 0x61, count: 128)))
        #expect(!BlockName.isCanonicalHash([UInt8](repeating: 0x61, count: 129)))
        #expect(BlockName.fanout(of: Array("ab23456789abcdef".utf8)) == 0xAB)
        #expect(BlockName.fanoutByte(ofDirectory: Array("3f".utf8)) == 0x3F)
        #expect(BlockName.fanoutByte(ofDirectory: Array("3F".utf8)) == nil)
    }

    @Test func anyNameOfOneTo255BytesWithoutSlashOrNulIsAFileOrDirectoryName() {
        #expect(BlockName.checkComponent(Array("weights.bin".utf8)) == .success("weights.bin"))
        #expect(BlockName.checkComponent(Array("ab".utf8)) == .success("ab"))
        #expect(BlockName.checkComponent([0x61, 0xC3, 0x28]) == .failure(.invalid))   // not UTF-8
        #expect(BlockName.checkComponent(Array("..".utf8)) == .failure(.invalid))
        #expect(BlockName.checkComponent(Array(".".utf8)) == .failure(.invalid))
        #expect(BlockName.checkComponent(Array("a/b".utf8)) == .failure(.invalid))
        #expect(BlockName.checkComponent([0x61, 0x00]) == .failure(.invalid))
        #expect(BlockName.checkComponent([]) == .failure(.invalid))
        #expect(BlockName.checkComponent([UInt8](repeating: 0x61, count: 255)) == .success(String(repeating: "a", count: 255)))
        #expect(BlockName.checkComponent([UInt8](repeating: 0x61, count: 256)) == .failure(.tooLong))
    }

    @Test func theCanonicalPathIsTheHashAndEveryOtherPathIsItself() {
        let hash = "0a1b2c3d4e5f6071"
        #expect(BlockPath.key(directory: "0a", name: hash) == hash)
        #expect(BlockPath.key(directory: "0b", name: hash) == "0b/" + hash)
        #expect(BlockPath.key(directory: "", name: hash) == "/" + hash)
        #expect(BlockPath.key(directory: "", name: "weights.bin") == "weights.bin")
        #expect(BlockPath.key(directory: "abc/de_g0", name: hash + ".bin") == "abc/de_g0/" + hash + ".bin")
        #expect(BlockPath.key(relativePath: "0a/" + hash) == hash)
        #expect(BlockPath.key(relativePath: "a//b") == nil)
        #expect(BlockPath.key(relativePath: "a/../b") == nil)
        #expect(BlockPath.key(clientName: hash) == hash)
        #expect(BlockPath.key(clientName: "ab/cd/key.kvcache.safetensors") == "ab/cd/key.kvcache.safetensors")
    }

    @Test func keysMapBackToTheirPaths() {
        let hash = "0a1b2c3d4e5f6071"
        for (key, path) in [(hash, "0a/" + hash), ("/" + hash, hash), ("a/b/c", "a/b/c"), ("x", "x")] {
            #expect(BlockPath.relativePath(ofKey: key) == path)
            #expect(BlockPath.key(relativePath: path) == key)
            #expect(BlockPath.isValidKey(key))
        }
        #expect(BlockPath.split(key: hash) == ("0a", hash))
        #expect(BlockPath.split(key: "a/b/c") == ("a/b", "c"))
        #expect(BlockPath.split(key: "x") == ("", "x"))
        // The canonical path's other spellings are not keys: one block, one key.
        #expect(!BlockPath.isValidKey("0a/" + hash))
        #expect(!BlockPath.isValidKey("/notahash"))
        #expect(!BlockPath.isValidKey(""))
    }

    @Test func pathsAreLimitedInLengthAndDepth() {
        let deep = (0..<BlockName.maxDepth).map { "d\($0)" }.joined(separator: "/") + "/f"
        #expect(BlockPath.key(relativePath: deep) == deep)
        #expect(BlockPath.key(relativePath: "x/" + deep) == nil)
        let long = String(repeating: "a", count: 200) + "/"
        #expect(BlockPath.key(relativePath: String(repeating: long, count: 21) + "f") == nil)  // over 4096 bytes
    }

    @Test func blockKeysHashNamespaceAndKey() {
        #expect(BlockKey(namespace: "a", key: "b") == BlockKey(namespace: "a", key: "b"))
        #expect(BlockKey(namespace: "a", key: "b") != BlockKey(namespace: "a", key: "c"))
        #expect(BlockKey(namespace: "ns", key: "0a1b2c3d4e5f6071") != BlockKey(namespace: "ns", key: "/0a1b2c3d4e5f6071"))
    }

    @Test func aNameThatStartsWithACombiningMarkKeepsItsDirectory() {
        // "/" and U+0742 (a combining mark) are one Character in Swift; paths split at the byte.
        let name = "\u{742}x"
        let key = BlockPath.key(directory: "dd", name: name)
        #expect(key == "dd/" + name)
        #expect(BlockPath.isValidKey(key))
        #expect(BlockPath.split(key: key) == ("dd", name))
        #expect(BlockPath.components(of: "a/\u{742}/b") == ["a", "\u{742}", "b"])
        #expect(BlockPath.key(relativePath: "dd/" + name) == key)
    }
}
