// Gradle (Kotlin DSL) task that runs `mobilekit build` and copies the Android artifacts into the app.
// Apply from the app module's build.gradle.kts:   apply(from = "mobilekit.gradle.kts")
// The build fails when mobilekit exits non-zero (a budget exceeded, a parity failure, a bad config).
import groovy.json.JsonSlurper

val mobilekit = (findProperty("mobilekit.executable") as String?) ?: "mobilekit"
val mobilekitConfig = rootProject.file((findProperty("mobilekit.config") as String?) ?: "mobilekit.toml")
val mobilekitOut = layout.buildDirectory.dir("mobilekit")
val androidTargets = setOf("pixel-8", "pixel-10", "galaxy-s24", "galaxy-s25")

val mobilekitBuild by tasks.registering(Exec::class) {
    group = "mobilekit"
    description = "Export, measure and budget-check the models declared in mobilekit.toml"
    inputs.file(mobilekitConfig)
    outputs.dir(mobilekitOut)
    val buildJson = mobilekitOut.map { it.file("build-stdout.json") }
    commandLine(mobilekit, "build", "--config", mobilekitConfig.absolutePath, "--json",
                "--junit", mobilekitOut.get().file("mobilekit-junit.xml").asFile.absolutePath)
    doFirst { mobilekitOut.get().asFile.mkdirs(); standardOutput = buildJson.get().asFile.outputStream() }
}

val copyMobilekitModels by tasks.registering {
    group = "mobilekit"
    description = "Copy the Android artifacts (.pte, .tflite, .ptd) listed in build.json into src/main/assets/models"
    dependsOn(mobilekitBuild)
    doLast {
        @Suppress("UNCHECKED_CAST")
        val result = JsonSlurper().parse(mobilekitOut.get().file("build-stdout.json").asFile) as Map<String, Any>
        val outDir = File(result["out"] as String)
        val assets = project.file("src/main/assets/models").apply { mkdirs() }
        @Suppress("UNCHECKED_CAST")
        val artifacts = result["artifacts"] as Map<String, List<Map<String, Any>>>
        for ((model, list) in artifacts) {
            for (artifact in list) {
                @Suppress("UNCHECKED_CAST")
                val targets = artifact["targets"] as List<String>
                if (targets.none { it in androidTargets }) continue
                val files = listOf(artifact["path"] as String) + (artifact["extra_files"] as List<String>)
                for (name in files) File(outDir, "$model/$name").copyTo(File(assets, name), overwrite = true)
            }
            File(outDir, "$model/manifest.json").copyTo(File(assets, "$model-manifest.json"), overwrite = true)
        }
    }
}

tasks.matching { it.name == "preBuild" }.configureEach { dependsOn(copyMobilekitModels) }
